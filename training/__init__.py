"""Training of the PIR retrieval model and of its instruction (scene) encoder, single-process or DDP.

This ``__init__`` stays torch-free so that registering ``engine train`` costs the CLI nothing; the modules that
build models import ``encoders``, which runs the torchvision shim before timm/transformers load.
"""
