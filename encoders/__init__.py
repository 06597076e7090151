"""PIR encoders: vision/text backbones, instruction encoder, VIR and LCA, configs and checkpoints."""

from engine.torch_shim import ensure_torchvision_importable

ensure_torchvision_importable()
