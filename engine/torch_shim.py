"""Make ``import torchvision`` (and so ``timm`` and ``transformers``' vision models) work on CPU-only torch.

Why this exists: PyPI only has CUDA builds of torchvision 0.28. On the CPU wheel of torch 2.13 its compiled
ops library cannot be loaded, so torchvision's import-time fake-kernel registration for ``torchvision::nms``
fails with "operator torchvision::nms does not exist", which breaks ``import timm`` and
``from transformers import BertModel``. We first try to load torchvision's real ops library; when that is not
possible we declare the two operator schemas torchvision expects (``nms`` and ``qnms``) so that its import
succeeds. The declared ``nms`` gets a plain CPU implementation so that code calling it still works; ``qnms``
(quantised) only gets the schema. Nothing in this engine calls either.

``ensure_torchvision_importable()`` is idempotent and must run before torchvision is first imported; the
``encoders``, ``training`` and ``indexing`` packages call it from their ``__init__``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_state: dict[str, object] = {"done": False, "mode": "not-run"}
_library = None  # keeps the torch.library.Library alive for the process lifetime


def _try_load_native_ops() -> bool:
    """Load torchvision's compiled ops (``_C``) without importing torchvision; True when it worked."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for candidate in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(candidate))
        except (OSError, RuntimeError):
            continue
        if _operator_exists("nms"):
            return True
    return False


def _operator_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _nms_cpu(dets, scores, iou_threshold: float):
    """Reference greedy non-maximum suppression (boxes as x1, y1, x2, y2), returning kept indices."""
    import torch

    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = dets.unbind(dim=1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for position, index in enumerate(order.tolist()):
        if suppressed[position]:
            continue
        keep.append(index)
        rest = order[position + 1 :]
        width = (torch.minimum(x2[index], x2[rest]) - torch.maximum(x1[index], x1[rest])).clamp(min=0)
        height = (torch.minimum(y2[index], y2[rest]) - torch.maximum(y1[index], y1[rest])).clamp(min=0)
        intersection = width * height
        iou = intersection / (areas[index] + areas[rest] - intersection)
        suppressed[position + 1 :] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _declare_schemas() -> None:
    global _library
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        if not _operator_exists(name):
            _library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.impl("nms", _nms_cpu, "CPU")


def ensure_torchvision_importable() -> str:
    """Prepare torch so torchvision imports; returns how: 'already-imported', 'native', 'declared', 'absent'."""
    if _state["done"]:
        return str(_state["mode"])
    if "torchvision" in sys.modules:
        mode = "already-imported"
    elif importlib.util.find_spec("torchvision") is None:
        mode = "absent"
    elif _operator_exists("nms") or _try_load_native_ops():
        mode = "native"
    else:
        _declare_schemas()
        mode = "declared"
    _state.update(done=True, mode=mode)
    return mode
