"""Ablation rows as ``engine eval`` result files, plus the Recall@K comparison plot, from one bench script run.

Why result files: ``engine eval --compare docs/results/<group>/*.json --plot out.png`` then reproduces the
side-by-side table and figure from the very numbers the ablation script measured, with the same tool a
researcher uses for their own runs; nothing is typed in by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.evaluation.report import RECALL_KEYS, EvalResult, plot_comparison, write_result


def _file_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-").lower()


def write_ablation_results(rows: list[tuple[str, dict[str, float]]], dataset: dict, model: dict, search: dict,
                           meta: dict, folder: Path, plot: Path) -> list[Path]:
    """One result JSON per (label, recalls) row under ``folder`` (old ones removed) and the plot at ``plot``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):
        stale.unlink()
    paths, loaded = [], []
    for order, (label, recalls) in enumerate(rows):
        missing = [key for key in RECALL_KEYS if key not in recalls]
        if missing:
            raise ValueError(f"ablation row {label!r} lacks {', '.join(missing)}")
        result = EvalResult(dataset=dataset, model=model, search=search,
                            recalls={key: float(recalls[key]) for key in RECALL_KEYS},
                            settings={"label": label, "command": meta.get("command", "")},
                            git_commit=meta.get("commit", "unknown"), created=meta.get("date", ""))
        path = folder / f"{order:02d}-{_file_stem(label)}.json"
        write_result(result, path)
        paths.append(path)
        loaded.append((label, {"recalls": result.recalls, "dataset": dataset}))
    plot_comparison(loaded, plot)
    return paths
