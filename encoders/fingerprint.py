"""A model's identity: sha256 over its canonical config JSON and every weight (``PIRModel.fingerprint``, checked
by ``encoders.checkpoint`` on load and recorded in every index and result file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from encoders.model_config import ModelConfig


def compute_fingerprint(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the canonical config JSON, then every tensor's name, dtype, shape and bytes in key order."""
    digest = hashlib.sha256(config.to_json().encode("utf-8"))
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
