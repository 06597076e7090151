"""PIR encoders: vision/text backbones, instruction encoder, VIR and LCA, configs and checkpoints.

Public API (see docs/ARCHITECTURE.md): ``create_model``, ``load_model``, ``save_model``, ``ModelConfig``,
``load_config``, ``PIRModel``.
"""

from engine.torch_shim import ensure_torchvision_importable

ensure_torchvision_importable()

from encoders.checkpoint import create_model, load_model, save_model  # noqa: E402  (after the shim on purpose)
from encoders.model_config import ModelConfig, load_config  # noqa: E402
from encoders.model import PIRModel  # noqa: E402

__all__ = ["ModelConfig", "PIRModel", "create_model", "load_config", "load_model", "save_model"]
