"""`engine soup`: one model whose weights are the mean of several trained models' (a uniform "model soup",
Wortsman et al., ICML 2022).

Averaging works for models fine-tuned from one start, which stay in one basin of the loss: the seeds of an
``engine train --init-from`` run, or checkpoints of one run. Models trained from different starts do not average
into a good model, and nothing here can tell; score every soup on val (``engine eval``) and keep it only when it
beats its members there. The soup costs nothing at search time: it is one model of the members' architecture.
docs/ablations.md ("Model soup") has the measurements.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ConfigError

MIN_MEMBERS = 2


def soup(members: list[str], out: Path) -> dict:
    """Average ``members`` (checkpoint folders or shipped names, loaded strictly) into a checkpoint at ``out``;
    returns the saved checkpoint's meta. ``out`` must not exist yet."""
    import torch

    from encoders.checkpoint import (TRAINED_ON_FIELD, load_model, model_folder, read_checkpoint_meta,
                                     save_model)
    from encoders.model_config import NO_PRETRAINED

    if len(members) < MIN_MEMBERS:
        raise ConfigError(f"engine soup: needs at least {MIN_MEMBERS} models, got {len(members)}")
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; a soup is written to a new folder")
    from engine import preflight

    preflight.check_output_file(out, "--out")  # its folder exists or can be created, writable
    folders = []
    for spec in members:
        try:
            folders.append(model_folder(spec))
        except ConfigError as error:
            raise ConfigError(f"engine soup: {error}") from None
    metas = [read_checkpoint_meta(folder) for folder in folders]
    first = _architecture(metas[0]["model"])
    for folder, meta in zip(folders[1:], metas[1:]):
        theirs = _architecture(meta["model"])
        if theirs != first:
            differ = sorted(key for key in set(theirs) | set(first) if theirs.get(key) != first.get(key))
            raise ConfigError(f"engine soup: {folder} has another model config than {folders[0]} "
                              f"(differs in {', '.join(differ)}); only models of one config average")
    models = [load_model(folder) for folder in folders]
    states = [model.state_dict() for model in models]
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            averaged[key] = (sum(state[key].double() for state in states) / len(states)).to(first.dtype)
        elif all(torch.equal(state[key], first) for state in states[1:]):
            averaged[key] = first
        else:  # an integer buffer (a step counter) that differs has no meaningful mean
            averaged[key] = max((state[key] for state in states), key=lambda value: int(value.max()))
    result = models[0]
    result.load_state_dict(averaged, strict=True)
    trained_on: list[dict] = []
    for meta in metas:
        recorded = meta.get(TRAINED_ON_FIELD, [])
        trained_on.extend(record for record in (recorded if isinstance(recorded, list) else [])
                          if record not in trained_on)
    # heads and changed backbone tensors only, when the backbones come from a dependency (as training saves)
    from_dependencies = result.config.vision.pretrained != NO_PRETRAINED and bool(result.config.text.pretrained)
    save_model(result.eval(), out, include_backbones=not from_dependencies, trained_on=trained_on,
               souped_from=[str(meta.get("fingerprint")) for meta in metas])
    return read_checkpoint_meta(out)


# inference settings, not weights: members may differ in them; the soup keeps the first member's
_INFERENCE_FIELDS = {"vision": ("test_time_views",)}


def _architecture(model: dict) -> dict:
    """A checkpoint's model config without its inference settings."""
    kept = dict(model)
    for part, fields in _INFERENCE_FIELDS.items():
        if isinstance(kept.get(part), dict):
            kept[part] = {key: value for key, value in kept[part].items() if key not in fields}
    return kept
