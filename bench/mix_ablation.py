"""Training recipes on a mix of datasets (RSICD + UCM + AID), several seeds, scored on every captioned test split.

Every variant trains on the same mix file with cached trunk features; the epoch is chosen on the mean val mR of
the mix's caption datasets (RSICD val, carved out of its published train split, and UCM val), never on test. The
chosen checkpoint is then scored once on each caption dataset's test split (1 view, exact search, through the
cached trunk, as training's validation scores val). Runs are kept in ``--runs-file`` (in the repository) so a
later session adds variants or seeds without rerunning the others; a killed run resumes from its last epoch.
The ``--block`` of docs/ablations.md is rendered from that file.

    python -m bench.mix_ablation --mix bench/mixes/rsicd_ucm_aid.yaml \
        --instruction-weights runs/instruction-aid-tail1/instruction.safetensors --cache runs/cache-mix \
        --seeds 1 2 3 --epochs 10 --variants r-base --out runs/mix-ablation

A continuation variant (``r-12ep+8``) starts from a trained model instead (``--init-from``, e.g. another
variant's ``runs/mix-ablation/r-12ep-seed1/best``) and needs no ``--instruction-weights``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from engine.atomic import write_json_atomic
from release.docs_blocks import update_page

REPO = Path(__file__).resolve().parents[1]
KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
# the shipped recipe's training settings (docs/MODEL_CARD.md): full PIR, last EfficientNet stage and last MiniLM
# layer trained from a cached trunk at lr x0.1, the tail starting from its AID scene-classification training
_BASE = {"use_vir": True, "use_lca": True, "use_affiliation": True, "unfreeze_last": 1, "backbone_lr_scale": 0.1}
# a continuation's schedule: 8 more epochs from a warm restart at half the learning rate
_CONTINUATION = {**_BASE, "epochs": 8, "learning_rate": 2.5e-4}
# name -> (description, TrainConfig overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "r-base": ("the shipped recipe (full PIR, last stage/layer trained, AID-trained tail) on the mix", _BASE),
    "r-once": ("r-base, an image's repeated identical captions train as one pair (--repeated-captions once)",
               {**_BASE, "repeated_captions": "once"}),
    "r-hn5": ("r-once + hard negatives (HN-NCE, β = 5)", {**_BASE, "repeated_captions": "once",
                                                          "hard_negative_beta": 5.0}),
    "r-long": ("r-base, 20 epochs instead of 6 (RSICD val still rose at r-base's last epoch)",
               {**_BASE, "epochs": 20}),
    "r-12ep": ("r-base, 12 epochs instead of 6 (r-long's first step: 20 epochs do not fit one session here)",
               {**_BASE, "epochs": 12}),
    "r-12ep+8": ("a trained model (--init-from; the default shipped 2026-12-07: r-12ep seed 1) trained 8 more "
                 "epochs from a warm restart at half the learning rate; the row's seed is the continuation's",
                 _CONTINUATION),
    "r-12ep+8-hn5": ("r-12ep+8 with hard negatives (HN-NCE, β = 5): the same start, schedule and seeds",
                     {**_CONTINUATION, "hard_negative_beta": 5.0}),
    "r-12ep+8-once": ("r-12ep+8 with an image's repeated identical captions as one pair (--repeated-captions once): "
                      "the same start, schedule and seeds",
                      {**_CONTINUATION, "repeated_captions": "once"}),
    "r-tail2": ("r-once, the last two EfficientNet stages and MiniLM layers trained (--unfreeze-last 2)",
                {**_BASE, "repeated_captions": "once", "unfreeze_last": 2}),
    "r-lite2": ("r-once on EfficientNet-Lite2 at 260 px (config offline-lite2; its own AID-trained tail)",
                {**_BASE, "repeated_captions": "once", "model": "offline-lite2"}),
}
# variants whose instruction weights differ from --instruction-weights: variant -> flag that names them
INSTRUCTION_FLAGS = {"r-lite2": "--lite2-instruction"}
# variants that start from a trained model (--init-from) instead of the AID-trained tail
CONTINUATIONS = {"r-12ep+8", "r-12ep+8-hn5", "r-12ep+8-once"}


def variant_config(base, name: str, seed: int, instruction: dict[str, Path | None], init_from: str | None = None):
    overrides = dict(VARIANTS[name][1])
    if name in CONTINUATIONS:
        if init_from is None:
            raise SystemExit(f"variant {name} needs --init-from (the trained model it continues)")
        return dataclasses.replace(base, seed=seed, instruction_weights=None, init_from=init_from, **overrides)
    weights = instruction.get(name, instruction["default"])
    if weights is None:
        raise SystemExit(f"variant {name} needs {INSTRUCTION_FLAGS.get(name, '--instruction-weights')}")
    return dataclasses.replace(base, seed=seed, instruction_weights=str(weights), **overrides)


def test_scores(config, mix, run_dir: Path) -> dict[str, dict[str, float]]:
    """Test recalls (1 view) of ``run_dir/best`` on each caption dataset of the mix with a val split."""
    import torch

    from encoders.checkpoint import load_model
    from training.distributed import DistInfo
    from training.evaluate import evaluate_cached
    from training.loaders import cached_split_features
    from training.mix import relabelled_split
    from training.pairs import build_pairs

    model = load_model(run_dir / "best")
    scores = {}
    for source in mix.val_sources:
        pairs = build_pairs(relabelled_split(source, "test", mix.class_names), "test", class_names=mix.class_names)
        features = cached_split_features(Path(config.feature_cache), model, pairs, 1, config, torch.device("cpu"),
                                         DistInfo())
        scores[source.name] = evaluate_cached(model, pairs, features, config.eval_batch_size, torch.device("cpu"),
                                              config.recall_ks, tail=config.unfreeze_last)
    return scores


def run_variant(mix, config, name: str, out: Path) -> dict:
    from training.state import LAST_DIR, STATE_FILE, RunState
    from training.train import TrainResult, train

    state_file = out / LAST_DIR / STATE_FILE
    saved = RunState.from_json(state_file.read_text(), str(state_file)) if state_file.is_file() else None
    started = time.perf_counter()
    if saved is not None and saved.epoch >= config.epochs:
        result = TrainResult(out, saved, next(h["val"] for h in saved.history if h["epoch"] == saved.best_epoch))
    else:
        result = train(mix, config, out, resume=out if saved is not None else None, show_progress=False)
    seconds = time.perf_counter() - started
    epochs = [entry["seconds"] for entry in result.state.history]
    return {"variant": name, "seed": config.seed, "best_epoch": result.state.best_epoch, "val": result.best_metrics,
            "test": test_scores(config, mix, out), "train_seconds": round(seconds, 1),
            "epoch_seconds": round(sum(epochs) / len(epochs), 1), "resumed": saved is not None,
            "history_val_mR": [round(h["val"]["mR"], 2) for h in result.state.history]}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(value: tuple[float, float], count: int) -> str:
    """mean ± sample std; one seed has no spread to show."""
    return f"{value[0]:.2f} ± {value[1]:.2f}" if count > 1 else f"{value[0]:.2f}"


def summarise(runs: list[dict], seeds: list[int]) -> dict[str, dict]:
    summary = {}
    for name in VARIANTS:
        mine = [run for run in runs if run["variant"] == name and run["seed"] in seeds]
        if not mine:
            continue
        datasets = list(mine[0]["test"])
        row = {"seeds": [run["seed"] for run in mine], "epoch_seconds": _mean_sd([r["epoch_seconds"] for r in mine]),
               "val_mR": _mean_sd([r["val"]["mR"] for r in mine]),
               "best_epoch": [r["best_epoch"] for r in mine]}
        for dataset in datasets:
            row[f"val_{dataset}"] = _mean_sd([r["val"].get(f"{dataset}:mR", r["val"]["mR"]) for r in mine])
            for key in KEYS:
                row[f"test_{dataset}_{key}"] = _mean_sd([r["test"][dataset][key] for r in mine])
        row["datasets"] = datasets
        summary[name] = row
    return summary


def render(summary: dict[str, dict], meta: dict) -> str:
    datasets = next(iter(summary.values()))["datasets"] if summary else []
    lines = [
        f"Last run {meta['date']} on {meta['machine']}, commit `{meta['commit']}`.",
        f"Command (rows accumulate in `{meta['runs_file']}`): `{meta['command']}`",
        "",
        f"Mix: `{meta['mix']}`; {meta['epochs']} epochs unless the row says otherwise, batch {meta['batch_size']}, "
        f"lr {meta['lr']}; mean ± sample std over the seeds of each row (a row of one seed shows no spread). The epoch is chosen on the mean val mR of "
        f"{' and '.join(datasets)}; each test split is scored once, afterwards, with 1 view through the cached trunk "
        "(the same numbers `engine eval --test-time-views 1` gives up to float16 trunk storage). s/epoch: training "
        "seconds per epoch without validation; other jobs shared the 2 cores, so times compare only roughly.",
        "",
        "| variant | what | " + " | ".join(f"{d} test mR" for d in datasets) + " | "
        + " | ".join(f"{d} val mR" for d in datasets) + " | seeds | best epochs | s/epoch |",
        "|---|---|" + "---|" * (2 * len(datasets) + 3),
    ]
    for name, row in summary.items():
        count = len(row["seeds"])
        tests = [f"**{_cell(row[f'test_{d}_mR'], count)}**" for d in datasets]
        vals = [_cell(row[f"val_{d}"], count) for d in datasets]
        lines.append(f"| {name} | {VARIANTS[name][0]} | " + " | ".join(tests + vals)
                     + f" | {', '.join(map(str, row['seeds']))} | {', '.join(map(str, row['best_epoch']))} | "
                     f"{row['epoch_seconds'][0]:.0f} |")
    lines += ["", "Per-direction recalls (test, mean over seeds):", "",
              "| variant | dataset | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | mR |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        for d in datasets:
            lines.append(f"| {name} | {d} | " + " | ".join(f"{row[f'test_{d}_{k}'][0]:.2f}" for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mix", type=Path, required=True)
    parser.add_argument("--instruction-weights", type=Path, default=None, help="AID-trained tail + classifier "
                        "(every variant but the continuations)")
    parser.add_argument("--init-from", default=None, help="the trained model a continuation variant starts from "
                        "(checkpoint folder or shipped name)")
    parser.add_argument("--lite2-instruction", type=Path, default=None, help="the same for offline-lite2 (r-lite2)")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=["r-base"], choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/mix-ablation"))
    parser.add_argument("--runs-file", type=Path, default=REPO / "docs" / "bench" / "ablation_rsicd_runs.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--block", default="model-rsicd")
    parser.add_argument("--render-only", action="store_true",
                        help="train nothing: re-render the block from the runs file for --variants and --seeds")
    args = parser.parse_args()

    import torch

    from bench.machine import command_line, machine_text
    from engine.evaluation.report import git_commit
    from training.mix import load_mix, read_mix_file
    from training.train_config import TrainConfig

    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = read_mix_file(args.mix)
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                       feature_cache=str(args.cache), cached_views=args.views, mix=spec.to_dict())
    instruction = {"default": args.instruction_weights, "r-lite2": args.lite2_instruction}
    stored = json.loads(args.runs_file.read_text()) if args.runs_file.is_file() else {}
    runs = stored.get("runs", [])
    done = {(r["variant"], r["seed"]) for r in runs}
    mixes = {}
    for name in args.variants:
        for seed in args.seeds:
            if (name, seed) in done or args.render_only:
                continue
            config = variant_config(base, name, seed, instruction, args.init_from)
            if config.use_affiliation not in mixes:
                mixes[config.use_affiliation] = load_mix(spec, config.use_affiliation)
            run = run_variant(mixes[config.use_affiliation], config, name, args.out / f"{name}-seed{seed}")
            run["measured"] = f"{time.strftime('%Y-%m-%d')}, {git_commit(REPO)[:7]}"
            runs.append(run)
            write_json_atomic(args.runs_file, {"runs": runs}, indent=1)
            tests = ", ".join(f"{d} {s['mR']:.2f}" for d, s in run["test"].items())
            print(f"{name} seed {seed}: val mR {run['val']['mR']:.2f} (epoch {run['best_epoch']}), test mR {tests} "
                  f"({run['train_seconds']:.0f} s)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine_text(), "commit": git_commit(REPO),
            "command": command_line(), "mix": str(args.mix), "seeds": args.seeds, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr,
            "runs_file": str(args.runs_file.resolve().relative_to(REPO)) if args.runs_file.resolve().is_relative_to(
                REPO) else str(args.runs_file)}
    summary = summarise(runs, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2))
    if summary:
        update_page(args.docs, args.block, render(summary, meta))
        print(render(summary, meta))


if __name__ == "__main__":
    main()
