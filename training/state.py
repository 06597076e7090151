"""Run folders: the last complete epoch (for --resume) and the best-by-val checkpoint, each written atomically.

Layout of ``--out DIR``::

    train_config.json    the TrainConfig of the run
    history.json         one entry per finished epoch (losses, val recalls, seconds)
    last/                model checkpoint (config.json + model.safetensors) + trainer.pt + train_state.json
    best/                model checkpoint of the epoch with the best val mR + metrics.json

Why whole-folder swaps: a checkpoint is several files (weights, optimiser, RNG, JSON); writing them into a
temporary folder and renaming it over the old one means an interruption leaves either the old complete
checkpoint or the new complete one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from engine.errors import ConfigError

TRAINER_FILE = "trainer.pt"
STATE_FILE = "train_state.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CONFIG_FILE = "train_config.json"
LAST_DIR = "last"
BEST_DIR = "best"


@dataclass
class RunState:
    """What the JSON side of a checkpoint records: how far the run got and how good it was."""

    epoch: int = 0  # number of completed epochs
    global_step: int = 0
    best_score: float = float("-inf")
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data["best_score"] = None if self.best_score == float("-inf") else self.best_score
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str) -> "RunState":
        try:
            data = json.loads(text)
            best = data.pop("best_score")
            return cls(best_score=float("-inf") if best is None else float(best), **data)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"{source}: not a readable train_state.json ({error})") from None




def replace_folder(target: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` write a fresh temporary folder, then swap it in for ``target`` (old copy kept until then)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new."))
    try:
        fill(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.parent / f".{target.name}.old"
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def save_trainer(folder: Path, trainer_state: dict, run_state: RunState) -> None:
    torch.save(trainer_state, folder / TRAINER_FILE)
    (folder / STATE_FILE).write_text(run_state.to_json(), encoding="utf-8")


def load_trainer(folder: Path) -> tuple[dict, RunState]:
    trainer_path, state_path = folder / TRAINER_FILE, folder / STATE_FILE
    for path in (trainer_path, state_path):
        if not path.is_file():
            raise ConfigError(f"{path}: missing; --resume needs the 'last' folder of an earlier `engine train --out`")
    trainer_state = torch.load(trainer_path, map_location="cpu", weights_only=True)
    return trainer_state, RunState.from_json(state_path.read_text(encoding="utf-8"), str(state_path))
