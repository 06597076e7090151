"""The only place where training touches the encoders' API: build, freeze, split forward passes, save, load.

Why a separate module: the training loop, the feature cache and evaluation work on plain dicts of tensors
("image inputs" = what the frozen vision side produces, "text inputs" = what the frozen text side produces),
so that cached and live training run the same head code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from engine.errors import ConfigError
from training.train_config import TrainConfig
from training.feature_cache import hash_state, tensor_ids


def model_config_for(config: TrainConfig):
    from encoders.model_config import load_config

    model_config = load_config(config.model)
    head = dataclasses.replace(model_config.head, use_vir=config.use_vir, use_lca=config.use_lca)
    if config.lca_readout is not None:
        head = dataclasses.replace(head, lca_readout=config.lca_readout)
    instruction = model_config.instruction
    if config.instruction_weights is not None:
        instruction = dataclasses.replace(instruction, weights=config.instruction_weights)
    return model_config.replace(head=head, instruction=instruction)


def build_model(config: TrainConfig):
    from encoders.checkpoint import create_model

    model = create_model(model_config_for(config))
    set_trainable(model, config)
    return model


def set_trainable(model, config: TrainConfig) -> None:
    """Freeze the backbones (the instruction encoder always); optionally train their last N blocks."""
    model.requires_grad_(True)
    for frozen in _backbones(model):
        frozen.requires_grad_(False)
    if not config.freeze_backbones:
        model.vision.requires_grad_(True)
        model.text.requires_grad_(True)
    elif config.unfreeze_last > 0:
        for block in trainable_tail_modules(model, config.unfreeze_last):
            block.requires_grad_(True)
    if model.instruction is not None:
        model.instruction.freeze()


def keep_frozen_in_eval(model, config: TrainConfig) -> None:
    """Frozen backbones run in eval mode: BatchNorm statistics stay fixed and dropout stays off, so live
    training sees the same backbone function as the feature cache (and as inference)."""
    if config.freeze_backbones:
        model.vision.eval()
        model.text.eval()
    if model.instruction is not None:
        model.instruction.eval()


def trainable_tail_modules(model, count: int) -> list[torch.nn.Module]:
    """What ``--unfreeze-last count`` trains: for staged vision backbones (EfficientNet, Swin) the last stages
    and the layers after them (``encoders.split``, so a trunk cache can serve them), otherwise the last timm
    blocks; for the text backbone its last layers."""
    from encoders.split import staged_layout, text_tail_modules, vision_tail_modules

    network = model.vision.model
    if staged_layout(network) is not None:
        vision = vision_tail_modules(network, count)
    else:
        vision = _last_blocks(network, ("blocks", "layers", "stages"), count)
    return vision + text_tail_modules(model.text.model, count)


def _last_blocks(network: torch.nn.Module, names: tuple[str, ...], count: int) -> list[torch.nn.Module]:
    """The last ``count`` blocks of a timm network (EfficientNet ``blocks``, Swin ``layers``, ConvNeXt ``stages``)."""
    for name in names:
        container = getattr(network, name, None)
        if isinstance(container, (torch.nn.Sequential, torch.nn.ModuleList)) and len(container):
            return list(container)[-count:]
    raise ConfigError(f"--unfreeze-last: cannot find the blocks of {type(network).__name__} "
                      f"(looked for {', '.join(names)})")


def _backbones(model) -> list[torch.nn.Module]:
    parts = [model.vision, model.text]
    if model.instruction is not None:
        parts.append(model.instruction)
    return parts


def owns_instruction_backbone(model) -> bool:
    return model.instruction is not None and model.instruction.backbone is not None


def backbone_identity(model, tail: int = 0) -> str:
    """A hash of the frozen parts' weights and their config: the key of the feature cache.

    With ``tail`` > 0 the weights of the trainable tails are left out: they change during training while the
    cached trunk outputs do not, so a resumed run finds its cache again.

    An instruction encoder that shares the vision pass is *not* part of the key: its (cheap) classifier runs on
    the cached global token at training time, so one cache serves every VIR/LCA/affiliation ablation and every
    instruction checkpoint.
    """
    digest = hashlib.sha256()
    config = model.config
    described = [dataclasses.asdict(config.vision), dataclasses.asdict(config.text)]
    modules = [model.vision, model.text]
    if owns_instruction_backbone(model):
        described.append(dataclasses.asdict(config.instruction))
        modules.append(model.instruction)
    digest.update(json.dumps(described).encode())
    skipped: set[int] = set()
    if tail:
        digest.update(f"trunk before the last {tail} blocks".encode())
        skipped = tensor_ids(trainable_tail_modules(model, tail))
    for module in modules:
        hash_state(digest, module, skipped)
    return digest.hexdigest()


def image_inputs(model, pixels: torch.Tensor, tail: int = 0) -> dict[str, torch.Tensor]:
    """Backbone outputs as a dict; the instruction feature only when it needs a backbone pass of its own.

    With ``tail`` > 0: the vision trunk's map (``trunk``) instead of the tokens; ``embed_images`` runs the tail."""
    if tail:
        from encoders.split import vision_trunk

        inputs = {"trunk": vision_trunk(model.vision, pixels, tail)}
        if owns_instruction_backbone(model):
            inputs["instruction_feature"] = model.instruction.instruction_feature(pixels)
        return inputs
    tokens = model.forward_image_tokens(pixels)
    inputs = {"global_token": tokens.global_token, "patch_tokens": tokens.patch_tokens}
    if tokens.instruction_feature is not None and owns_instruction_backbone(model):
        inputs["instruction_feature"] = tokens.instruction_feature
    return inputs


def text_inputs(model, texts: list[str], tail: int = 0) -> dict[str, torch.Tensor]:
    """Last-layer hidden states and mask; with ``tail`` > 0 the hidden states entering the last layers."""
    if tail:
        from encoders.split import text_trunk

        batch = model.tokenize(texts).to(model.device)
        return {"trunk_hidden": text_trunk(model.text, batch.input_ids, batch.attention_mask, tail),
                "mask": batch.attention_mask}
    tokens = model.forward_text_tokens(texts)
    return {"hidden": tokens.hidden, "mask": tokens.mask}


def embed_images(model, inputs: dict[str, torch.Tensor], tail: int = 0) -> torch.Tensor:
    if "trunk" in inputs:
        from encoders.split import vision_tail

        global_token, patch_tokens = vision_tail(model.vision, _upcast(inputs["trunk"]), tail)
        inputs = {**inputs, "global_token": global_token, "patch_tokens": patch_tokens}
    global_token = _upcast(inputs["global_token"])
    if "instruction_feature" in inputs:
        instruction_feature = _upcast(inputs["instruction_feature"])
    elif model.instruction is not None:  # shares the vision pass: its classifier runs on the global token
        instruction_feature = model.instruction.instruction_from_pooled(global_token)
    else:
        instruction_feature = None
    return model.encode_image_from_tokens(global_token, _upcast(inputs["patch_tokens"]), instruction_feature)


def without_trailing_padding(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text inputs cut after the last position any caption of the batch uses.

    A cache pads every caption to its dataset's longest (and a mixed batch to the longest dataset's), while a
    batch's own longest caption is usually far shorter; padded positions are masked out of attention and pooling,
    so cutting them changes no embedding and saves the text tail's work on them (measured: docs/benchmarks.md,
    "Cached training step")."""
    mask = inputs["mask"]
    used = torch.nonzero(mask.any(dim=0))
    length = int(used[-1]) + 1 if len(used) else 1
    if length >= mask.shape[1]:
        return inputs
    return {key: value[:, :length] if value.dim() >= 2 and value.shape[1] == mask.shape[1] else value
            for key, value in inputs.items()}


def embed_texts(model, inputs: dict[str, torch.Tensor], tail: int = 0) -> torch.Tensor:
    inputs = without_trailing_padding(inputs)
    if "trunk_hidden" in inputs:
        from encoders.split import text_tail

        hidden = text_tail(model.text, _upcast(inputs["trunk_hidden"]), inputs["mask"], tail)
        return model.encode_text_from_tokens(hidden, inputs["mask"])
    return model.encode_text_from_tokens(_upcast(inputs["hidden"]), inputs["mask"])


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype == torch.float16 else tensor


def _backbones_come_from_dependencies(model, config: TrainConfig) -> bool:
    from encoders.model_config import NO_PRETRAINED

    untouched = config.freeze_backbones and config.unfreeze_last == 0
    return untouched and model.config.vision.pretrained != NO_PRETRAINED and model.config.text.pretrained


def init_from(model, spec: str) -> list[dict]:
    """Load the weights of the trained model ``spec`` names (``encoders.checkpoint.model_folder``: a folder or a
    shipped name) into ``model``, strictly; returns its ``trained_on`` record (a model trained
    further still carries what its start saw: ``engine eval --zero-shot`` must not call that data unseen)."""
    from encoders.checkpoint import TRAINED_ON_FIELD, load_weights as load_checkpoint, model_folder, read_checkpoint_meta

    folder = model_folder(spec)
    meta = read_checkpoint_meta(folder)
    try:
        load_checkpoint(model, folder)
    except ConfigError as error:
        raise ConfigError(f"--init-from {spec}: {error}") from None
    recorded = meta.get(TRAINED_ON_FIELD, [])
    return recorded if isinstance(recorded, list) else []


def merged_provenance(start: list[dict], run: list[dict]) -> list[dict]:
    """The datasets a model trained from ``start`` has seen: the start's records, then the run's own; a record
    the run repeats exactly is kept once."""
    return [record for record in start if record not in run] + list(run)


def save_model(model, folder: Path, config: TrainConfig, trained_on: list[dict] | None = None) -> None:
    """Checkpoint folder via the encoders' format; heads only when the backbones are unchanged pretrained ones.
    ``trained_on``: the datasets trained on (recorded in the checkpoint, read by ``engine eval --zero-shot``)."""
    from encoders.checkpoint import save_model as save_checkpoint

    save_checkpoint(model, folder, include_backbones=not _backbones_come_from_dependencies(model, config),
                    trained_on=trained_on)


def load_weights(model, folder: Path) -> None:
    """Strictly load a checkpoint's weights into ``model``; a config/dimension mismatch names both sides."""
    from encoders.checkpoint import load_weights as load_checkpoint

    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: not a checkpoint folder")
    load_checkpoint(model, folder)
