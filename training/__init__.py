"""Training of the PIR retrieval model and of its instruction (scene) encoder, single-process or DDP."""

from engine.torch_shim import ensure_torchvision_importable

ensure_torchvision_importable()
