"""Model folders (``config.json`` + ``model.safetensors``), strict loading, fingerprints, named configs.

A folder can hold every weight, or only the weights that no dependency provides (projections, VIR/LCA, the
instruction encoder): the backbones are then rebuilt from their pretrained sources (the EfficientNet-Lite0 and
MiniLM packages), which keeps the shipped default model a few MB. When training changed some backbone tensors
(``--unfreeze-last``: the last stage/layer), exactly those tensors are stored too and listed in the config
(``weights: heads+changed-backbone``), so a partially fine-tuned model still ships without the ~100 MB of
backbone weights its dependencies already hold; loading checks the stored set against that list, strictly.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from encoders.model_config import NO_PRETRAINED, ModelConfig, config_from_dict, load_config
from encoders.fingerprint import compute_fingerprint
from encoders.model import PIRModel
from encoders.strict_load import read_safetensors, state_problem
from engine.errors import ConfigError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "weights"
# earlier defaults, kept loadable by name (``--model ucm-v1``) to reproduce the tables made with them
NAMED_MODELS_DIR = Path(__file__).resolve().parent / "named_models"
DEFAULT_NAME = "default"
BACKBONE_PREFIXES = ("vision.", "text.")
FULL, HEADS_ONLY, HEADS_AND_CHANGES = "full", "heads-only", "heads+changed-backbone"
WEIGHT_LAYOUTS = (FULL, HEADS_ONLY, HEADS_AND_CHANGES)
CHANGED_KEYS_FIELD = "changed_backbone_keys"
TRAINED_ON_FIELD = "trained_on"  # the datasets a checkpoint was trained on (engine.data.Dataset.identity())
SOUPED_FROM_FIELD = "souped_from"  # fingerprints of the models a soup averages (training.soup)


def create_model(name_or_config: str | Path | ModelConfig) -> PIRModel:
    """A freshly initialised model from a ModelConfig, a config JSON path, or a shipped config name."""
    config = name_or_config if isinstance(name_or_config, ModelConfig) else load_config(name_or_config)
    return PIRModel(config)


def shipped_model_names() -> list[str]:
    """Names ``load_model`` takes besides folders: ``default`` and the earlier defaults kept in the package."""
    named = sorted(p.name for p in NAMED_MODELS_DIR.iterdir() if (p / CONFIG_FILE).is_file()) \
        if NAMED_MODELS_DIR.is_dir() else []
    return [DEFAULT_NAME, *named]


def model_folder(spec: str | Path | None = None) -> Path:
    """The checkpoint folder ``spec`` names: ``None``/``default`` = the shipped default (``encoders/weights/``), a
    shipped name (``ucm-v1``), or a folder."""
    if spec is None or str(spec) == DEFAULT_NAME:
        if not (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file():
            raise ConfigError(
                f"no default model is shipped yet ({DEFAULT_MODEL_DIR} is empty); train one with `engine train` "
                "and pass its folder"
            )
        return DEFAULT_MODEL_DIR
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    if (NAMED_MODELS_DIR / str(spec) / CONFIG_FILE).is_file() and "/" not in str(spec):
        return NAMED_MODELS_DIR / str(spec)
    raise ConfigError(f"{folder}: model checkpoint folder not found (expected {CONFIG_FILE} + {WEIGHTS_FILE}), "
                      f"and not a shipped model name ({', '.join(shipped_model_names())})")


def training_provenance(spec: str | Path | None = None) -> list[dict[str, Any]]:
    """What the checkpoint records about the data it was trained on (``trained_on``; empty when unrecorded)."""
    recorded = read_checkpoint_meta(model_folder(spec)).get(TRAINED_ON_FIELD, [])
    return recorded if isinstance(recorded, list) else []


def load_model(spec: str | Path | None = None) -> PIRModel:
    """Load a checkpoint (``model_folder``: ``None`` = the shipped default, a shipped name, a folder), in eval
    mode."""
    folder = model_folder(spec)
    meta = read_checkpoint_meta(folder)
    model = PIRModel(config_from_dict(meta["model"], source=str(folder / CONFIG_FILE)))
    load_weights(model, folder)
    from encoders.query_bank import BANK_FILE, read_bank

    if (folder / BANK_FILE).is_file():  # the fingerprint hashes every weight: only when there is a bank to check
        model.query_bank = read_bank(folder, model.fingerprint(one_view=True), model.config.head.embed_dim)
    return model.eval()


def read_checkpoint_meta(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; not a model checkpoint folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable checkpoint config ({error})") from error
    if not isinstance(meta, dict) or "model" not in meta or "format_version" not in meta:
        raise ConfigError(f"{path}: not a checkpoint config (needs 'format_version' and 'model')")
    if meta["format_version"] != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version {meta['format_version']} is not supported (expected {FORMAT_VERSION})")
    if meta.get("weights") not in WEIGHT_LAYOUTS:
        raise ConfigError(f"{path}: field 'weights' must be one of {', '.join(map(repr, WEIGHT_LAYOUTS))}")
    changed = meta.get(CHANGED_KEYS_FIELD, [])
    if meta["weights"] == HEADS_AND_CHANGES and (not isinstance(changed, list) or not changed
                                                 or not all(isinstance(key, str) and key.startswith(BACKBONE_PREFIXES)
                                                            for key in changed)):
        raise ConfigError(f"{path}: field {CHANGED_KEYS_FIELD!r} must list the stored backbone tensors "
                          f"(names starting with {' or '.join(BACKBONE_PREFIXES)})")
    return meta


def save_model(
    model: PIRModel, folder: Path, include_backbones: bool = True, half_precision: bool = False,
    trained_on: list[dict[str, Any]] | None = None, souped_from: list[str] | None = None,
) -> Path:
    """Write ``folder`` atomically (temp folder + rename). ``include_backbones=False`` stores only our own weights
    plus the backbone tensors that differ from their pretrained sources.

    ``half_precision`` stores floating-point weights as float16 (half the size; used for the model shipped
    inside the package). They are cast back to the model's dtype on load, so the fingerprint is that of the
    loaded model, not of the training-time float32 weights.
    """
    folder = Path(folder)
    state = _portable_state(model)
    changed: list[str] = []
    if not include_backbones:
        changed = changed_backbone_keys(model)
        state = {key: value for key, value in state.items() if not key.startswith(BACKBONE_PREFIXES) or key in changed}
    if half_precision:
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    config = model.config
    if config.instruction.weights is not None:  # the weights now live in model.safetensors
        config = config.replace(instruction=_replace(config.instruction, weights=None))
    meta = {
        "format_version": FORMAT_VERSION,
        "weights": FULL if include_backbones else HEADS_AND_CHANGES if changed else HEADS_ONLY,
        "storage_dtype": "float16" if half_precision else "native",
        "model": config.to_dict(),
        "vision_identity": {
            "timm_name": config.vision.timm_name,
            "pretrained": config.vision.pretrained,
            "width": model.vision.width,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.vision.data_config.items()},
        },
        "text_identity": model.text.identity(),
        "embed_dim": config.embed_dim,
        "fingerprint": _loaded_fingerprint(model, config, state),
    }
    if changed:
        meta[CHANGED_KEYS_FIELD] = changed
    if trained_on:
        meta[TRAINED_ON_FIELD] = trained_on
    if souped_from:
        meta[SOUPED_FROM_FIELD] = souped_from
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _make_readable(staging)
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            folder.rename(backup)
            staging.rename(folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a 0700 folder and safetensors a 0600 file: give the checkpoint the usual umask modes instead,
    so a model saved by one user (or shipped in the package) loads for another."""
    from engine.atomic import make_readable

    make_readable(folder)
    for path in folder.iterdir():
        make_readable(path)


def load_weights(model: PIRModel, folder: Path) -> None:
    """Strictly load ``folder``'s weights into ``model``; any mismatch names both configs."""
    meta = read_checkpoint_meta(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing checkpoint weights")
    saved = read_safetensors(path, "checkpoint weights")
    checkpoint_config = meta["model"]
    _check_dims(checkpoint_config, model.config, folder)
    expected = _portable_state(model)
    if meta["weights"] != FULL:
        kept = set(meta.get(CHANGED_KEYS_FIELD, []))
        unknown = sorted(kept - set(expected))
        if unknown:
            raise ConfigError(f"{folder / CONFIG_FILE}: {CHANGED_KEYS_FIELD} names {unknown[0]!r}, which config "
                              f"{model.config.name!r} does not have")
        expected = {k: v for k, v in expected.items() if not k.startswith(BACKBONE_PREFIXES) or k in kept}
    problem = state_problem(saved, expected)
    if problem:
        raise ConfigError(f"{path}: does not fit config {model.config.name!r} ({problem})")
    # Heads-only checkpoints leave the (other) backbone keys to their pretrained sources (already in the model).
    full_state = dict(model.state_dict())
    full_state.update(saved)
    model.load_state_dict(full_state, strict=True)


def _loaded_fingerprint(model: PIRModel, saved_config: ModelConfig, saved: Mapping[str, torch.Tensor]) -> str:
    """The fingerprint the model will report once loaded from this folder (saved config, stored precision)."""
    state = dict(model.state_dict())
    state.update({key: value.to(state[key].dtype) for key, value in saved.items()})
    return compute_fingerprint(saved_config, state)


def _portable_state(model: PIRModel) -> dict[str, torch.Tensor]:
    """State dict as contiguous CPU tensors without shared storage (safetensors refuses aliases)."""
    return {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}


def changed_backbone_keys(model: PIRModel) -> list[str]:
    """Backbone tensors (weights and buffers) that differ from a freshly built model's pretrained ones, sorted."""
    config = model.config
    if config.vision.pretrained == NO_PRETRAINED or not config.text.pretrained:
        raise ConfigError(
            "include_backbones=False needs backbones that a dependency provides; this config has a randomly "
            "initialised backbone"
        )
    # The reference loads no instruction weights, so AID-trained shared-backbone tensors that came with them count
    # as changed and are stored (the saved config drops the weights path).
    reference = PIRModel(config.replace(head=_replace(config.head, use_vir=False, use_lca=False),
                                        instruction=_replace(config.instruction, weights=None))).state_dict()
    return sorted(key for key, value in model.state_dict().items()
                  if key.startswith(BACKBONE_PREFIXES) and not torch.equal(value.cpu(), reference[key]))


def _check_dims(checkpoint_config: dict[str, Any], config: ModelConfig, folder: Path) -> None:
    head = checkpoint_config.get("head", {}) if isinstance(checkpoint_config, dict) else {}
    for field in ("embed_dim", "heads", "n_v", "n_t", "r_k", "use_vir", "use_lca"):
        ours = getattr(config.head, field)
        if field in head and head[field] != ours:
            raise ConfigError(
                f"{folder}: checkpoint {field} {head[field]} does not match config {field} {ours} "
                f"(config {config.name!r})"
            )
    for part in ("vision", "text", "instruction"):
        theirs = checkpoint_config.get(part, {}) if isinstance(checkpoint_config, dict) else {}
        for field in ("timm_name", "model"):
            ours = getattr(getattr(config, part), field, None)
            if ours is not None and field in theirs and theirs[field] != ours:
                raise ConfigError(
                    f"{folder}: checkpoint {part}.{field} {theirs[field]!r} does not match config {part}.{field} {ours!r}"
                )


def _replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)
