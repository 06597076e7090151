"""Two trained models as one: does concatenating their (weighted) embeddings, with a query bank, retrieve better
than the first model alone? Chosen on val, paired on the same images, scored on every caption dataset of a mix.

The ensemble's image and text embeddings are [√w · a, √(1−w) · b] for the members' unit embeddings a and b, so a
cosine of the ensemble is w · cos_a + (1 − w) · cos_b. The query bank (querybank normalisation, both directions,
the balanced bank of ``bench.query_bank``) is rebuilt on the ensemble's embeddings of the training splits. w and β
are chosen on the mean val mR of the mix's datasets; the first member is scored with its own bank at
``--base-beta`` (the shipped bank's β). Embeddings come from each member's cached trunk (1 view, as training's
validation) and are kept in ``--work`` (one file per member), so a second run with other weights is quick.

    python -m bench.ensemble --mix bench/mixes/rsicd_ucm_aid.yaml \
        --member runs/soup4,runs/mix-ablation/r-12ep+8-seed1/train_config.json,runs/cache-mix \
        --member runs/mix-ablation/r-tail2-seed1/best,runs/mix-ablation/r-tail2-seed1/train_config.json,runs/cache-mix-tail2

Results accumulate in ``--runs-file`` (one entry per member pair); the ``ensemble`` block of docs/ablations.md is
rendered from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from engine.atomic import write_json_atomic
from engine.errors import ConfigError
from release.docs_blocks import update_page

REPO = Path(__file__).resolve().parents[1]
KINDS = ("images", "texts", "distinct", "counts", "owner")


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def member_embeddings(spec: str, mix, names: list[str], work: Path) -> dict[str, np.ndarray]:
    """``MODEL,TRAIN_CONFIG,CACHE`` -> {"dataset:split:kind": array} for train/val/test, cached in ``work``."""
    parts = spec.split(",")
    if len(parts) != 3:
        raise ConfigError(f"--member {spec!r}: expected MODEL_DIR,TRAIN_CONFIG,FEATURE_CACHE")
    model_dir, config_file, cache = map(Path, parts)
    for path in (model_dir, config_file, cache):
        if not path.exists():
            raise ConfigError(f"--member {spec!r}: {path} does not exist")
    from encoders.checkpoint import read_checkpoint_meta

    fingerprint = read_checkpoint_meta(model_dir)["fingerprint"]
    key = hashlib.sha256(f"{fingerprint}|{','.join(names)}".encode()).hexdigest()[:16]
    stored = work / f"embeddings-{key}.npz"
    if stored.is_file():
        with np.load(stored) as data:
            return dict(data)
    from bench.query_bank import _embed_split
    from encoders.checkpoint import load_model
    from training.train_config import TrainConfig

    config = dataclasses.replace(TrainConfig.load(config_file), feature_cache=str(cache))
    model = load_model(model_dir)
    arrays = {}
    for source in mix.val_sources:
        for split in ("train", "val", "test"):
            part = _embed_split(model, config, mix, source, split)
            arrays.update({f"{source.name}:{split}:{kind}": part[kind] for kind in KINDS})
    work.mkdir(parents=True, exist_ok=True)
    staging = stored.with_suffix(".partial.npz")
    np.savez(staging, **arrays)
    staging.replace(stored)
    return arrays


def combined(first: dict, second: dict | None, weight: float, name: str, split: str, kind: str) -> np.ndarray:
    key = f"{name}:{split}:{kind}"
    if second is None or kind in ("counts", "owner"):
        return first[key]
    return np.hstack([np.sqrt(weight) * first[key], np.sqrt(1 - weight) * second[key]]).astype(np.float32)


def banked_ranks(first: dict, second: dict | None, weight: float, beta: float | None, names: list[str], name: str,
                 split: str):
    """Ranks of ``name``'s ``split`` under the (ensemble's) balanced query bank of both directions (``beta`` None:
    the plain cosine, the papers' protocol)."""
    from bench.query_bank import bank_parts
    from encoders.query_bank import QueryBank, with_offset_columns
    from engine.metrics import retrieval_ranks

    def get(dataset: str, part: str, kind: str) -> np.ndarray:
        return combined(first, second, weight, dataset, part, kind)

    images, texts, owner = (get(name, split, kind) for kind in ("images", "texts", "owner"))
    if beta is None:
        return retrieval_ranks(images, texts, owner), owner
    text_bank, text_weights, image_bank, image_weights = bank_parts(
        *([get(n, "train", kind) for n in names] for kind in ("distinct", "counts", "images")), "balanced")
    bank = QueryBank(text_bank, text_weights, image_bank, beta, model_fingerprint="", sources="bench.ensemble",
                     image_log_weights=image_weights)
    return retrieval_ranks(*with_offset_columns(images, texts, bank), owner), owner


def _grid_key(weight: float, beta: float | None) -> str:
    return f"{weight:g}|{'plain' if beta is None else f'{beta:g}'}"


def score_pair(first: dict, second: dict, names: list[str], weights: list[float], betas: list[float | None],
               base_beta: float | None) -> dict:
    from engine.metrics import paired_difference, recall_intervals, recalls_from_ranks

    grid = {}
    for weight in weights:
        for beta in betas:
            val = [recalls_from_ranks(banked_ranks(first, second, weight, beta, names, n, "val")[0])["mR"]
                   for n in names]
            grid[_grid_key(weight, beta)] = round(float(np.mean(val)), 2)
    weight, beta = max(((w, b) for w in weights for b in betas), key=lambda pair: grid[_grid_key(*pair)])
    splits = {}
    for name in names:
        for split in ("val", "test"):
            base, owner = banked_ranks(first, None, 1.0, base_beta, names, name, split)
            both, _ = banked_ranks(first, second, weight, beta, names, name, split)
            diff = paired_difference(base, both, owner)
            splits[f"{name}:{split}"] = {
                "first": round(recalls_from_ranks(base)["mR"], 2), "ensemble": round(recalls_from_ranks(both)["mR"], 2),
                "ensemble_interval": recall_intervals(both, owner)["bounds"]["mR"],
                "paired": {"mR": diff["mR"], "bounds": diff["bounds"]}}
    return {"grid": grid, "chosen": {"weight": weight, "beta": beta}, "splits": splits}


def encode_cost(first_dir: Path, second_dir: Path, batch: int = 32, repeats: int = 5, cut: int = 2) -> dict:
    """Median seconds to embed one batch of random 224 px images with each member (1 view), and with the part of
    the first member's backbone both share when they differ only in their last ``cut`` stages (the frozen,
    pretrained trunk): an ensemble that runs that trunk once costs first + second − trunk. Member calls alternate,
    so load from other processes hits them alike; ``load_average`` says how busy the machine was."""
    import torch

    from bench.machine import load_average
    from encoders.checkpoint import load_model
    from encoders.split import network_trunk

    models = [load_model(folder).eval().set_test_time_views(1) for folder in (first_dir, second_dir)]
    network = models[0].vision.model
    pixels = torch.randn(batch, 3, 224, 224)
    calls = {"first": lambda: models[0].encode_image_view(pixels), "second": lambda: models[1].encode_image_view(pixels),
             "trunk": lambda: network_trunk(network, pixels, cut)}
    seconds = {name: [] for name in calls}
    before = load_average()
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm-up
        for _ in range(repeats):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) for name, values in seconds.items()}
    return {"batch": batch, "repeats": repeats, "cut": cut, "median_seconds": {k: round(v, 3) for k, v in median.items()},
            "speed_vs_first": {"two_full_models": round(median["first"] / (median["first"] + median["second"]), 2),
                               "shared_trunk": round(median["first"] / (median["first"] + median["second"]
                                                                        - median["trunk"]), 2)},
            "load_average": [before, load_average()], "torch_threads": torch.get_num_threads()}


def render(entries: list[dict], meta: dict) -> str:
    lines = [f"Measured on {meta['machine']}; 1 view, exact search, cached trunks; both directions query-bank "
             "normalised (balanced bank of the training splits, rebuilt on the ensemble's embeddings) unless an entry "
             "says plain cosine (then neither has a bank). w and β chosen on the mean val mR; the first member alone "
             "keeps its own β. Cells: first member → ensemble (paired 95% interval of the change, 1,000 draws of the "
             "split's images).", ""]
    for entry in entries:
        names = entry["datasets"]
        beta = entry["chosen"]["beta"]
        how = "plain cosine, no query bank for either" if beta is None else f"β {beta:g}"
        lines += [f"`{entry['first']}` + `{entry['second']}` ({entry['measured']}): chosen w {entry['chosen']['weight']:g}, "
                  f"{how}, mean val {entry['base_val']:.2f} → {entry['grid'][_key(entry)]:.2f}", "",
                  "| split | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for split in ("val", "test"):
            cells = []
            for name in names:
                cell = entry["splits"][f"{name}:{split}"]
                low, high = cell["paired"]["bounds"]
                cells.append(f"{cell['first']:.2f} → {cell['ensemble']:.2f} ({low:+.2f} to {high:+.2f})")
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
        cost = entry.get("cost")
        if cost:
            ms = cost["median_seconds"]
            lines += ["", f"Image encoding, 1 view, batch {cost['batch']} (median of {cost['repeats']}, torch threads "
                      f"{cost['torch_threads']}, load average {cost['load_average'][0][0]:.1f} before / "
                      f"{cost['load_average'][1][0]:.1f} after): first member {ms['first']:.2f} s, second "
                      f"{ms['second']:.2f} s, their shared trunk (all but the last {cost['cut']} stages) "
                      f"{ms['trunk']:.2f} s. The ensemble would index at {cost['speed_vs_first']['two_full_models']:.2f}× "
                      f"the first member's speed running both models whole, "
                      f"{cost['speed_vs_first']['shared_trunk']:.2f}× running the shared trunk once."]
        lines.append("")
    lines.append(f"Command (entries accumulate in `{meta['runs_file']}`): `{meta['command']}`")
    return "\n".join(lines) + "\n"


def _key(entry: dict) -> str:
    return _grid_key(entry["chosen"]["weight"], entry["chosen"]["beta"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mix", type=Path, required=True, help="the mix file the members were trained on")
    parser.add_argument("--member", action="append", required=True,
                        help="MODEL_DIR,TRAIN_CONFIG,FEATURE_CACHE (twice: the first member, then the second)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--betas", type=float, nargs="+", default=[7.0, 10.0, 14.0, 20.0])
    parser.add_argument("--base-beta", type=float, default=10.0, help="the first member's own bank β")
    parser.add_argument("--work", type=Path, default=Path("runs/ensemble"))
    parser.add_argument("--runs-file", type=Path, default=REPO / "docs" / "bench" / "ensemble_runs.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--block", default="ensemble")
    parser.add_argument("--plain", action="store_true",
                        help="no query bank for either (the plain cosine of the papers' tables); --betas ignored")
    parser.add_argument("--cost", action="store_true", help="also time image encoding of each member")
    parser.add_argument("--shared-stages", type=int, default=2,
                        help="with --cost: the members' backbones differ only in their last N stages (the rest is "
                             "the frozen pretrained trunk both share)")
    args = parser.parse_args()
    if len(args.member) != 2:
        raise ConfigError(f"--member: give exactly two members, got {len(args.member)}")
    if any(not 0 < weight < 1 for weight in args.weights):
        raise ConfigError("--weights: each weight of the first member must lie strictly between 0 and 1")

    from bench.machine import command_line, machine_text
    from engine.evaluation.report import git_commit
    from training.mix import load_mix, read_mix_file

    mix = load_mix(read_mix_file(args.mix), True)
    names = [source.name for source in mix.val_sources]
    first, second = (member_embeddings(spec, mix, names, args.work) for spec in args.member)
    betas, base_beta = ([None], None) if args.plain else (args.betas, args.base_beta)
    entry = score_pair(first, second, names, args.weights, betas, base_beta)
    base_val = float(np.mean([entry["splits"][f"{n}:val"]["first"] for n in names]))
    entry.update(first=_rel(Path(args.member[0].split(",")[0])), second=_rel(Path(args.member[1].split(",")[0])),
                 datasets=names, base_val=round(base_val, 2), base_beta=base_beta,
                 measured=f"{time.strftime('%Y-%m-%d')}, {git_commit(REPO)[:7]}")
    if args.cost:
        entry["cost"] = encode_cost(*(Path(spec.split(",")[0]) for spec in args.member), cut=args.shared_stages)
    stored = json.loads(args.runs_file.read_text())["entries"] if args.runs_file.is_file() else []
    same = (entry["first"], entry["second"], args.plain)
    stored = [e for e in stored if (e["first"], e["second"], e["chosen"]["beta"] is None) != same] + [entry]
    write_json_atomic(args.runs_file, {"entries": stored}, indent=1)
    meta = {"machine": machine_text(), "command": command_line(), "runs_file": _rel(args.runs_file)}
    text = render(stored, meta)
    update_page(args.docs, args.block, text)
    print(text)


if __name__ == "__main__":
    main()
