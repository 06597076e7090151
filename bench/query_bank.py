"""Query-bank normalisation (QB-Norm with the inverted softmax; Bogolin et al., CVPR 2022) of trained models,
scored on every caption dataset of a mix: does correcting hubness move retrieval, and by how much?

A gallery item that is close to many queries (a "hub") crowds the top of every result list. Querybank
normalisation measures each gallery item against a fixed bank of *training* queries and subtracts that:

    score(q, g) = q·g − (1/β) log Σ_b exp(β b·g)        (b: the bank's query embeddings)

The correction is one number per gallery item, so it needs no test queries (nothing transductive) and could live
in an index as one more vector column. Here the text→image bank is the distinct training captions of all the
mix's caption datasets (each weighted by how often it occurs), the image→text bank their training images. β is
chosen on the mean val mR of the datasets, per model, never on test. Embeddings come from the cached trunk (1 view,
as training's validation), so the "none" column equals bench.mix_ablation's test scores.

    python -m bench.query_bank --mix bench/mixes/rsicd_ucm_aid.yaml --cache runs/cache-mix \
        --train-config runs/mix-ablation/r-12ep+8-seed1/train_config.json --models runs/mix-ablation/r-12ep+8-seed1/best runs/mix-ablation/r-12ep+8-seed2/best

Results accumulate in ``--runs-file`` (one entry per model folder); the ``query-bank`` block of docs/ablations.md
is rendered from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np

from encoders.query_bank import bank_offsets
from engine.atomic import write_json_atomic
from release.docs_blocks import update_page

REPO = Path(__file__).resolve().parents[1]
NO_NORM = "none"


def normalised_recalls(images: np.ndarray, texts: np.ndarray, owner: np.ndarray, image_offsets: np.ndarray,
                       text_offsets: np.ndarray) -> dict[str, float]:
    """Exact recalls with each gallery item's offset subtracted: two extra columns, [image, −o_img, 1] and
    [text, 1, −o_text], make every inner product q·g − o_g plus a per-query constant, which leaves each query's
    ranking unchanged (so ``engine.metrics.retrieval_recalls`` scores it as is)."""
    from engine.metrics import retrieval_recalls

    ones_i, ones_t = np.ones((len(images), 1)), np.ones((len(texts), 1))
    image_rows = np.hstack([images, -image_offsets[:, None], ones_i]).astype(np.float32)
    text_rows = np.hstack([texts, ones_t, -text_offsets[:, None]]).astype(np.float32)
    return retrieval_recalls(image_rows, text_rows, owner)


def _embed_split(model, config, mix, source, split: str) -> dict[str, np.ndarray]:
    import torch

    from training.distributed import DistInfo
    from training.evaluate import embed_cached
    from training.loaders import cached_split_features
    from training.mix import relabelled_split
    from training.pairs import build_pairs

    pairs = build_pairs(relabelled_split(source, split, mix.class_names), split, class_names=mix.class_names)
    features = cached_split_features(Path(config.feature_cache), model, pairs, 1, config, torch.device("cpu"),
                                     DistInfo())
    rows: dict[str, list[int]] = {}
    for index, text in enumerate(pairs.texts):
        rows.setdefault(text, []).append(index)
    first = [indices[0] for indices in rows.values()]  # identical strings embed identically: each once
    images, distinct = (part.numpy() for part in embed_cached(
        model, features, len(pairs.image_ids), first, config.eval_batch_size, torch.device("cpu"),
        config.unfreeze_last))
    slot = np.empty(len(pairs.texts), np.int64)
    for position, indices in enumerate(rows.values()):
        slot[indices] = position
    return {"images": images, "texts": distinct[slot], "distinct": distinct,
            "counts": np.asarray([len(indices) for indices in rows.values()], np.float64),
            "owner": np.asarray(pairs.text_to_image)}


def bank_parts(texts: list[np.ndarray], counts: list[np.ndarray], images: list[np.ndarray], weighting: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(text bank, its log weights, image bank, its log weights or None) from each dataset's distinct training
    captions with their counts and its training images. ``count``: every caption counts once (the bigger dataset
    dominates); ``balanced``: every dataset's captions and images weigh the same in all, whatever its size."""
    image_weights = None
    if weighting == "balanced":
        counts = [c / c.sum() for c in counts]
        image_weights = np.log(np.concatenate([np.full(len(part), 1.0 / len(part)) for part in images]))
    return np.concatenate(texts), np.log(np.concatenate(counts)), np.concatenate(images), image_weights


def score_model(folder: Path, config, mix, betas: list[float], directions: str = "t2i",
                weighting: str = "count") -> dict:
    import torch

    from encoders.checkpoint import load_model, read_checkpoint_meta
    from engine.metrics import retrieval_recalls

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(folder)
    names = [source.name for source in mix.val_sources]
    splits = {(source.name, split): _embed_split(model, config, mix, source, split)
              for source in mix.val_sources for split in ("train", "val", "test")}
    text_bank, text_weights, image_bank, image_weights = bank_parts(
        [splits[(name, "train")]["distinct"] for name in names], [splits[(name, "train")]["counts"] for name in names],
        [splits[(name, "train")]["images"] for name in names], weighting)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for beta in [None, *betas]:
        key = NO_NORM if beta is None else f"{beta:g}"
        scores[key] = {}
        for name in names:
            for split in ("val", "test"):
                part = splits[(name, split)]
                if beta is None:
                    result = retrieval_recalls(part["images"], part["texts"], part["owner"])
                else:
                    text_offsets = (bank_offsets(part["texts"], image_bank, beta, image_weights)
                                    if directions in ("both", "i2t") else np.zeros(len(part["texts"])))
                    image_offsets = (bank_offsets(part["images"], text_bank, beta, text_weights)
                                     if directions in ("both", "t2i") else np.zeros(len(part["images"])))
                    result = normalised_recalls(part["images"], part["texts"], part["owner"], image_offsets,
                                                text_offsets)
                scores[key][f"{name}:{split}"] = round(result["mR"], 2)
        for split in ("val", "test"):
            scores[key][f"mean:{split}"] = round(statistics.mean(scores[key][f"{n}:{split}"] for n in names), 2)
    chosen = max((key for key in scores if key != NO_NORM), key=lambda key: scores[key]["mean:val"])
    return {"model": str(folder.resolve().relative_to(REPO)) if folder.resolve().is_relative_to(REPO) else str(folder),
            "fingerprint": read_checkpoint_meta(folder)["fingerprint"], "datasets": names,
            "bank": {"texts": int(len(text_bank)),
                     "caption_rows": int(sum(len(splits[(n, "train")]["texts"]) for n in names)),
                     "images": int(len(image_bank))}, "weighting": weighting,
            "directions": directions, "chosen_beta": chosen, "scores": scores}


def render(entries: list[dict], meta: dict) -> str:
    names = entries[0]["datasets"]
    head = "| model | normalised | β (chosen on val) | mean val mR | " + " | ".join(f"{n} test mR" for n in names) + " |"
    measured = ", ".join(f"`{m}`" for m in dict.fromkeys(e.get("measured", meta["date"]) for e in entries))
    lines = [f"Measured on {meta['machine']} (date, commit of each entry: {measured}); 1 view, exact search, "
             f"cached trunk. Bank: {entries[0]['bank']['texts']:,} distinct training captions "
             f"({entries[0]['bank']['caption_rows']:,} rows) and {entries[0]['bank']['images']:,} training images of "
             f"{', '.join(names)}. Cells: without → with the normalisation.", "",
             head, "|---|---|---|---|" + "---|" * len(names)]
    for entry in entries:
        none, best = entry["scores"][NO_NORM], entry["scores"][entry["chosen_beta"]]
        lines.append(f"| `{entry['model']}` | {_label(entry)} | {entry['chosen_beta']} | {none['mean:val']:.2f} → {best['mean:val']:.2f} | "
                     + " | ".join(f"{none[f'{n}:test']:.2f} → {best[f'{n}:test']:.2f}" for n in names) + " |")
    groups: dict[tuple[str, str], list[dict]] = {}
    for entry in entries:
        if entry.get("seed_run"):
            groups.setdefault((_recipe(entry), _label(entry)), []).append(entry)
    for (recipe, label), seeds in groups.items():
        if len(seeds) > 1:
            lines += ["", f"{recipe}, {label} normalised, change over the {len(seeds)} seed runs (mean ± sample std "
                      "of with − without): " + "; ".join(f"{n} test {_delta(seeds, f'{n}:test')}" for n in names)
                      + f"; mean val {_delta(seeds, 'mean:val')}."]
    lines += ["", f"Command (entries accumulate in `{meta['runs_file']}`): `{meta['command']}`"]
    return "\n".join(lines) + "\n"


_DIRECTIONS = {"t2i": "text→image", "i2t": "image→text", "both": "both directions"}


def _label(entry: dict) -> str:
    weighting = entry.get("weighting", "count")
    return _DIRECTIONS[entry["directions"]] + ("" if weighting == "count" else f", {weighting} bank")


def _recipe(entry: dict) -> str:
    """The recipe a seed run belongs to: its run folder's name without ``-seedN``
    (``runs/mix-ablation/r-12ep+8-seed2/best`` -> ``r-12ep+8``); seeds of different recipes are never pooled."""
    for part in reversed(Path(entry["model"]).parts):
        match = re.fullmatch(r"(.+)-seed\d+", part)
        if match:
            return match.group(1)
    return entry["model"]


def _key(entry: dict) -> tuple:
    return entry["model"], entry["directions"], entry.get("weighting", "count")


def _delta(entries: list[dict], key: str) -> str:
    values = [e["scores"][e["chosen_beta"]][key] - e["scores"][NO_NORM][key] for e in entries]
    return f"{statistics.mean(values):+.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mix", type=Path, required=True, help="the mix file the models were trained on")
    parser.add_argument("--cache", type=Path, required=True, help="the training feature cache (trunk features)")
    parser.add_argument("--train-config", type=Path, required=True,
                        help="train_config.json of a run that filled --cache (its cache settings are reused)")
    parser.add_argument("--models", type=Path, nargs="*", default=[], help="checkpoint folders to score")
    parser.add_argument("--seed-runs", type=Path, nargs="*", default=[],
                        help="checkpoint folders that are seeds of one recipe (summarised together)")
    parser.add_argument("--betas", type=float, nargs="+", default=[5.0, 7.0, 10.0, 14.0, 20.0])
    parser.add_argument("--directions", choices=tuple(_DIRECTIONS), default="t2i",
                        help="t2i: text→image lists normalised (image offsets from the caption bank); i2t: "
                             "image→text lists (caption offsets from the image bank); both")
    parser.add_argument("--weighting", choices=("count", "balanced"), default="count",
                        help="count: each training caption counts once (the bigger dataset dominates the bank); "
                             "balanced: each dataset's captions and images weigh the same in all")
    parser.add_argument("--runs-file", type=Path, default=REPO / "docs" / "bench" / "query_bank_runs.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--block", default="query-bank")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()

    from bench.machine import command_line, machine_text
    from engine.evaluation.report import git_commit
    from training.mix import load_mix, read_mix_file
    from training.train_config import TrainConfig

    stored = json.loads(args.runs_file.read_text())["entries"] if args.runs_file.is_file() else []
    config = dataclasses.replace(TrainConfig.load(args.train_config), feature_cache=str(args.cache))
    mix = None
    for folder, seed_run in [*((m, False) for m in args.models), *((m, True) for m in args.seed_runs)]:
        if args.render_only:
            break
        mix = mix or load_mix(read_mix_file(args.mix), True)
        entry = score_model(folder, config, mix, args.betas, args.directions, args.weighting)
        entry["seed_run"] = seed_run
        entry["measured"] = f"{time.strftime('%Y-%m-%d')}, {git_commit(REPO)[:7]}"
        stored = [e for e in stored if _key(e) != _key(entry)] + [entry]
        write_json_atomic(args.runs_file, {"entries": stored}, indent=1)
        best = entry["scores"][entry["chosen_beta"]]
        print(f"{entry['model']}: β {entry['chosen_beta']}, " + ", ".join(
            f"{k} {entry['scores'][NO_NORM][k]:.2f} -> {v:.2f}" for k, v in best.items()), flush=True)
    if stored:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine_text(), "commit": git_commit(REPO),
                "command": command_line(), "runs_file": str(args.runs_file.resolve().relative_to(REPO))
                if args.runs_file.resolve().is_relative_to(REPO) else str(args.runs_file)}
        update_page(args.docs, args.block, render(stored, meta))
        print(render(stored, meta))


if __name__ == "__main__":
    main()
