"""Model ablation on UCM-captions: floor, CL-only, +VIR, +LCA, full PIR (and CL+affiliation), several seeds.

Every variant trains on the same cached frozen-backbone features with the same budget; the best epoch is chosen
on the **val** split, and only that checkpoint is scored once on the test split. Every run's result is kept in
``docs/bench/ablation_model_runs.json`` (in the repository, so later sessions add variants without rerunning
the others), and the ``model`` block of docs/ablations.md is rendered from that file (never typed in). Rows
whose per-seed runs were not kept (measured before the file existed) are carried as the summaries that the
script printed then, under ``earlier_summaries``, each with the date and commit it was measured at; a new
measurement of a variant replaces its earlier summary.

    python -m bench.train_ablation --data ../shared/data/ucm_captions \
        --instruction-weights runs/instruction-aid/instruction.safetensors --cache runs/cache-ucm \
        --seeds 1 2 3 --epochs 15 --out runs/ablation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from bench.ablation_results import write_ablation_results
from release.docs_blocks import update_page
from engine.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[1]

# stand for the files given by flags in a variant's overrides
AID_TAIL = "<--aid-tail-instruction>"
SEPARATE_INSTRUCTION = "<--separate-instruction>"
TRAIN_MASKS = "<--train-masks>"
PLACEHOLDER_FLAGS = {AID_TAIL: "--aid-tail-instruction", SEPARATE_INSTRUCTION: "--separate-instruction",
                     TRAIN_MASKS: "--train-masks"}
# stands for the --mix file (a mix of datasets, training/mix.py) in a variant's overrides
MIX = "<--mix>"
# full PIR with the last backbone stage/layer trained from a trunk cache (the g/m/n rows)
_TAIL1 = {"use_vir": True, "use_lca": True, "use_affiliation": True, "unfreeze_last": 1, "backbone_lr_scale": 0.1}
# name -> (description, TrainConfig overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "a-floor": ("frozen backbones + 2 linear projections, InfoNCE, no augmentation",
                {"use_vir": False, "use_lca": False, "use_affiliation": False, "augment": False}),
    "b-cl-only": ("CL-only: projections, InfoNCE, same recipe as full PIR",
                  {"use_vir": False, "use_lca": False, "use_affiliation": False}),
    "c-vir": ("CL + VIR", {"use_vir": True, "use_lca": False, "use_affiliation": False}),
    "d-lca": ("CL + LCA", {"use_vir": False, "use_lca": True, "use_affiliation": False}),
    "e-full": ("full PIR: VIR + LCA + affiliation", {"use_vir": True, "use_lca": True, "use_affiliation": True}),
    "f-cl-aff": ("CL + affiliation (no VIR/LCA)", {"use_vir": False, "use_lca": False, "use_affiliation": True}),
    # identical captions of other images as positives (UCM: 8,400 train captions, 1,636 distinct strings)
    "h-full-samecap": ("full PIR, identical captions of other images count as positives",
                       {"use_vir": True, "use_lca": True, "use_affiliation": True, "same_caption_positives": True}),
    "i-cl-aff-samecap": ("CL + affiliation, identical captions of other images count as positives",
                         {"use_vir": False, "use_lca": False, "use_affiliation": True,
                          "same_caption_positives": True}),
    # hard negatives (HN-NCE): negatives weighted by exp(β·cosine) in the contrastive softmax
    "j-cl-aff-hn5": ("CL + affiliation, hard negatives β=5", {"use_vir": False, "use_lca": False,
                                                               "use_affiliation": True, "hard_negative_beta": 5.0}),
    "k-cl-aff-hn10": ("CL + affiliation, hard negatives β=10", {"use_vir": False, "use_lca": False,
                                                                 "use_affiliation": True, "hard_negative_beta": 10.0}),
    "l-cl-aff-hn5-samecap": ("CL + affiliation, hard negatives β=5, identical captions as positives",
                             {"use_vir": False, "use_lca": False, "use_affiliation": True,
                              "hard_negative_beta": 5.0, "same_caption_positives": True}),
    # partial unfreezing: needs a trunk cache (features before the last blocks), so it is measured in its own
    # block with its own runs file (--block model-tail), not in the frozen-feature table
    "g-tail1": ("full PIR + last EfficientNet stage and last MiniLM layer trained (lr ×0.1), cached trunk",
                _TAIL1),
    # the same, from the AID-trained tail of `engine train-instruction --unfreeze-last 1` (--aid-tail-instruction);
    # m and n differ only in the file passed there
    "m-aidtail1": ("as g-tail1, but the last EfficientNet stage starts from its AID scene-classification training",
                   {**_TAIL1, "instruction_weights": AID_TAIL}),
    "n-aidtail1-lr3": ("as m-aidtail1, with the AID stage trained at lr ×0.3 instead of ×0.1 "
                       "(train-instruction --backbone-lr-scale 0.3)",
                       {**_TAIL1, "instruction_weights": AID_TAIL}),
    # issue 19: the papers' own formulations (f<item>-...), each on top of the shipped recipe m-aidtail1 unless
    # it says otherwise; measured in their own block (--block model-faithful) beside a re-run of m-aidtail1
    "f1-aff-pir": ("as m-aidtail1, with PIR's affiliation formula (--affiliation pir: raw class means per "
                          "sample, image centre vs all texts)",
                          {**_TAIL1, "instruction_weights": AID_TAIL, "affiliation": "pir"}),
    "f2-lca-mean": ("as m-aidtail1, LCA read out by the masked mean over the caption (--lca-readout mean, "
                           "like the mean-pooled global token) instead of position 0",
                           {**_TAIL1, "instruction_weights": AID_TAIL, "lca_readout": "mean"}),
    "f4-par": ("as m-aidtail1, with PAR training (--par: VIR's last self-attention reinforced at the "
                       "top-20% positions shared with a same-class reference; gates CCS, ASCS > 0.7)",
                       {**_TAIL1, "instruction_weights": AID_TAIL, "par": True}),
    # a separate instruction network (PIR's structure): its own EfficientNet-Lite0, fully trained on AID
    # (train-instruction --config offline-separate-instruction --train-backbone), pooled feature, frozen;
    # the vision side as in g-tail1 (ImageNet weights, last stage trained on UCM)
    "f3-sep-instr": ("as g-tail1, but VIR's instruction is a second EfficientNet-Lite0 fully trained on AID "
                   "(pooled feature), not the shared pass's logits",
                   {**_TAIL1, "model": "offline-separate-instruction", "instruction_weights": SEPARATE_INSTRUCTION}),
    # no instruction file either: an --instruction-weights file with an AID-trained tail would otherwise load that
    # tail into the vision backbone, and the row would no longer be g-tail1's vision side
    "f3-tail1-novir": ("as g-tail1 without VIR (no instruction at all): what VIR adds in f3-sep-instr and g-tail1",
                      {**_TAIL1, "use_vir": False, "instruction_weights": None}),
    # training with background masks (the background-bias study), foreground = the shipped model's VIR belief
    # (engine index masks --source vir-belief); val and test images unmasked
    "f5-mask-soft": ("as m-aidtail1, training images' background × 0.5 (soft mask; foreground = the "
                             "shipped model's VIR belief)",
                             {**_TAIL1, "instruction_weights": AID_TAIL, "train_mask": "soft",
                              "train_mask_sigma": 0.5, "train_masks": TRAIN_MASKS}),
    "f5-mask-hard": ("as m-aidtail1, training images' background set to 0 (hard mask; foreground = the "
                             "shipped model's VIR belief)",
                             {**_TAIL1, "instruction_weights": AID_TAIL, "train_mask": "hard",
                              "train_masks": TRAIN_MASKS}),
    # a mix of datasets (--mix FILE, e.g. bench/mixes/ucm_aid.yaml): UCM captions + AID scene labels as captions;
    # val (epoch choice) and test stay UCM's, so rows compare with m-aidtail1
    "o-mix-aid": ("as m-aidtail1, trained on the --mix file's datasets (UCM + AID's 8,000 training images with "
                  "captions made from their class names), captions of one class as positives",
                  {**_TAIL1, "instruction_weights": AID_TAIL, "mix": MIX, "same_caption_positives": True}),
}
FROZEN_VARIANTS = [name for name, (_, overrides) in VARIANTS.items() if not overrides.get("unfreeze_last")]
KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")


def variant_config(base, name: str, seed: int, aid_tail_instruction: Path | None,
                   files: dict[str, Path | None] | None = None, mix: Path | None = None):
    """The TrainConfig of one (variant, seed) run; a variant whose overrides name a placeholder gets the file of
    that flag (``files``: placeholder -> path; --aid-tail-instruction also as its own argument) and cannot run
    without it; a variant that trains on a mix gets the --mix file."""
    given = {AID_TAIL: aid_tail_instruction, **(files or {})}
    overrides = dict(VARIANTS[name][1])
    for key, value in list(overrides.items()):
        if value in PLACEHOLDER_FLAGS:
            if given.get(value) is None:
                raise SystemExit(f"variant {name} needs {PLACEHOLDER_FLAGS[value]} (see the variant's comment in "
                                 "bench/train_ablation.py)")
            overrides[key] = str(given[value])
    if overrides.get("mix") == MIX:
        if mix is None:
            raise SystemExit(f"variant {name} needs --mix FILE (a mix of datasets, docs/training-mix.md)")
        from training.mix import read_mix_file

        overrides["mix"] = read_mix_file(mix).to_dict()
    return dataclasses.replace(base, seed=seed, **overrides)


def _cache_files(folder: str) -> set[str]:
    from training.feature_cache import CACHE_FILE_PATTERN

    return {path.name for path in Path(folder).glob(CACHE_FILE_PATTERN)}


def run_variant(dataset, config, name: str, out: Path) -> dict:
    import torch

    from encoders.checkpoint import load_model
    from training.loaders import cached_split_features
    from training.distributed import DistInfo
    from training.evaluate import evaluate_cached
    from training.pairs import build_pairs
    from training.train import train

    # a run that first had to encode its images (a new cache file: fresh folder, masked images, another
    # instruction network) spent most of its time there: its time is not a training time
    cache_before = _cache_files(config.feature_cache)
    data = dataset
    if config.mix:  # train on the mix; val and test stay the --data dataset's (the mix's primary)
        from training.mix import MixSpec, load_mix

        data = load_mix(MixSpec.from_dict(config.mix, "--mix"), config.use_affiliation)
        if data.primary_source.dataset.root != dataset.root:
            raise SystemExit(f"--mix: its val dataset is {data.primary_source.dataset.root}, not --data {dataset.root}")
    # an interrupted run (killed, machine restarted) continues from its last epoch: the result is the same;
    # one that had finished training (but not its test scoring) is scored as it is
    from training.state import LAST_DIR, STATE_FILE, RunState
    from training.train import TrainResult

    state_file = out / LAST_DIR / STATE_FILE
    saved = RunState.from_json(state_file.read_text(), str(state_file)) if state_file.is_file() else None
    started = time.perf_counter()
    if saved is not None and saved.epoch >= config.epochs:
        best = next(h["val"] for h in saved.history if h["epoch"] == saved.best_epoch)
        result = TrainResult(out, saved, best)
    else:
        result = train(data, config, out, resume=out if saved is not None else None, show_progress=False)
    seconds = time.perf_counter() - started
    built_cache = bool(_cache_files(config.feature_cache) - cache_before)
    model = load_model(out / "best")
    train_pairs = build_pairs(dataset, "train")
    test_pairs = build_pairs(dataset, "test", class_names=train_pairs.class_names)
    features = cached_split_features(Path(config.feature_cache), model, test_pairs, 1, config, torch.device("cpu"),
                                DistInfo())  # unmasked: training masks apply to training images only
    test = evaluate_cached(model, test_pairs, features, config.eval_batch_size, torch.device("cpu"), config.recall_ks,
                           tail=config.unfreeze_last)
    epoch_seconds = [entry["seconds"] for entry in result.state.history]
    return {"variant": name, "seed": config.seed, "best_epoch": result.state.best_epoch, "val": result.best_metrics,
            "test": test, "train_seconds": round(seconds, 1), "built_feature_cache": built_cache,
            "epoch_seconds": round(sum(epoch_seconds) / len(epoch_seconds), 1), "load_at_end": _load(),
            "resumed": saved is not None}  # train_seconds then counts only this process's part


def _load() -> float:
    """1-minute load average when the run ended (other jobs share this machine's cores)."""
    import os

    return round(os.getloadavg()[0], 2)


def summarise(runs: list[dict]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for name in VARIANTS:
        mine = [run for run in runs if run["variant"] == name]
        if not mine:
            continue
        timed = ([r["train_seconds"] for r in mine if not r.get("built_feature_cache") and not r.get("resumed")]
                 or [r["train_seconds"] for r in mine])
        epochs = [r["epoch_seconds"] for r in mine if r.get("epoch_seconds")]
        row = {"seeds": len(mine), "train_seconds": statistics.mean(timed),
               "epoch_seconds": statistics.mean(epochs) if epochs else None,
               "measured": "; ".join(sorted({r.get("measured", "?") for r in mine}))}
        for split in ("val", "test"):
            for key in KEYS:
                values = [r[split][key] for r in mine]
                row[f"{split}_{key}"] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        summary[name] = row
    return summary


def merged_summary(runs: list[dict], earlier: dict[str, dict], seeds: list[int]) -> dict[str, dict]:
    """Rows in table order: a variant measured here (under ``seeds``) replaces its earlier saved summary."""
    measured = summarise([run for run in runs if run["seed"] in seeds])
    return {name: measured.get(name) or earlier[name] for name in VARIANTS if name in measured or name in earlier}


def write_comparison(summary: dict[str, dict], meta: dict, dataset, folder: Path, plot: Path) -> None:
    """Mean test recalls per variant as `engine eval` result files + the Recall@K plot."""
    test = dataset.split("test")
    record = {"name": dataset.name, "kind": dataset.kind, "root": meta["data"], "split": "test",
              "images": len(test.images), "captions": len(test.captions)}
    rows = [(name, {key: row[f"test_{key}"][0] for key in KEYS}) for name, row in summary.items()]
    write_ablation_results(rows, record, {"spec": meta["model"], "note": f"mean over seeds {meta['seeds']}"},
                           {"mode": "exact"}, meta, folder, plot)


def render(summary: dict[str, dict], meta: dict) -> str:
    lines = [
        f"Last run {meta['date']} on {meta['machine']}, commit `{meta['commit']}`; the `measured` column says "
        "when each row was measured (rows of earlier runs are their saved summaries).",
        f"Command (rows accumulate in `{meta['runs_file']}`; other rows came from the same command "
        f"with other `--variants`): `{meta['command']}`",
        "",
        f"Data: {meta['data']} (train for training, val for choosing the epoch, test scored once). Mean ± sample "
        f"std over seeds {meta['seeds']}; {meta['epochs']} epochs, batch {meta['batch_size']}, lr "
        f"{meta['lr']}, model config `{meta['model']}`, cached backbone features ({meta['views']} dihedral views "
        "per training image; frozen backbones unless the row says which blocks train). s/run: mean training "
        "time per seed, leaving out a run that first had to build the feature cache; s/epoch: mean seconds of a "
        "training epoch (without val), where recorded. Other engineers' jobs share this machine's 2 cores: times "
        "from different days or loads do not compare (each run records the load average at its end).",
        "",
        "| variant | what | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | test mR | val mR | s/run "
        "| s/epoch | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        cells = [f"{row[f'test_{k}'][0]:.2f}" for k in KEYS[:-1]]
        mr, sd = row["test_mR"]
        val_mr, val_sd = row["val_mR"]
        lines.append(f"| {name} | {VARIANTS[name][0]} | " + " | ".join(cells)
                     + f" | **{mr:.2f} ± {sd:.2f}** | {val_mr:.2f} ± {val_sd:.2f} | {row['train_seconds']:.0f} "
                     + f"| {'-' if not row.get('epoch_seconds') else format(row['epoch_seconds'], '.0f')} "
                     + f"| {row.get('measured', meta['date'] + ', ' + meta['commit'][:7])} |")
    lines += ["", f"![Recall@K per variant (test, mean over seeds)]({meta['plot']})", "",
              f"Side by side from the result files: `engine eval --compare {meta['results']}/*.json --plot out.png`."]
    return "\n".join(lines) + "\n"


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--instruction-weights", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--model", default="offline-default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=FROZEN_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="checkpoints of each run")
    parser.add_argument("--runs-file", type=Path, default=REPO / "docs" / "bench" / "ablation_model_runs.json",
                        help="every run's result (kept in the repository) and earlier summaries")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "results" / "model",
                        help="folder for one `engine eval` result JSON per variant (test-split means)")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "ablation-model.png")
    parser.add_argument("--block", default="model", help="block of --docs to rewrite")
    parser.add_argument("--aid-tail-instruction", type=Path, default=None,
                        help="instruction weights with an AID-trained backbone tail (variants m-, n-aidtail1*)")
    parser.add_argument("--separate-instruction", type=Path, default=None,
                        help="weights of a separate, fully AID-trained instruction network (variant f3-sep-instr)")
    parser.add_argument("--train-masks", type=Path, default=None,
                        help="foreground PNGs of the training images (variants f5-mask-*)")
    parser.add_argument("--mix", type=Path, default=None,
                        help="mix file for the mix variants (o-mix-*), e.g. bench/mixes/ucm_aid.yaml")
    args = parser.parse_args()

    import torch

    from engine.data import load_dataset
    from engine.evaluation.report import git_commit
    from training.train_config import TrainConfig
    from bench.machine import command_line, machine_text

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dataset = load_dataset(args.data)
    base = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                       feature_cache=str(args.cache), cached_views=args.views,
                       instruction_weights=str(args.instruction_weights))
    stored = json.loads(args.runs_file.read_text()) if args.runs_file.is_file() else {}
    runs, earlier = stored.get("runs", []), stored.get("earlier_summaries", {})
    done = {(r["variant"], r["seed"]) for r in runs}
    for name in args.variants:
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            config = variant_config(base, name, seed, args.aid_tail_instruction,
                                    {SEPARATE_INSTRUCTION: args.separate_instruction, TRAIN_MASKS: args.train_masks}, args.mix)
            run = run_variant(dataset, config, name, args.out / f"{name}-seed{seed}")
            run["measured"] = f"{time.strftime('%Y-%m-%d')}, {git_commit(REPO)[:7]}"
            runs.append(run)
            write_json_atomic(args.runs_file, {"runs": runs, "earlier_summaries": earlier}, indent=1)
            print(f"{name} seed {seed}: val mR {run['val']['mR']:.2f}, test mR {run['test']['mR']:.2f} "
                  f"({run['train_seconds']:.0f} s)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine_text(), "commit": git_commit(REPO),
            "command": command_line(), "data": str(args.data), "seeds": args.seeds,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "model": args.model,
            "views": args.views, "plot": _relative(args.plot, args.docs.parent),
            "runs_file": _relative(args.runs_file, REPO), "results": _relative(args.results, REPO)}
    # every variant measured so far (not only this invocation's) under the requested seeds, in table order
    summary = merged_summary(runs, earlier, args.seeds)
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2))
    write_comparison(summary, meta, dataset, args.results, args.plot)
    update_page(args.docs, args.block, render(summary, meta))
    print(render(summary, meta))


if __name__ == "__main__":
    main()
