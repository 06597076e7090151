"""Render the numbers of docs/MODEL_CARD.md from the files the shipped model's training and evaluation wrote.

    python -m release.model_card --run runs/shipped --val runs/shipped/eval-val.json \
        --test runs/shipped/eval-test.json --instruction runs/instruction-aid/instruction_report.json \
        --also runs/shipped/eval-val-1view.json runs/shipped/eval-test-1view.json

``--val`` and ``--test`` take one result file per dataset (a model trained on a mix is scored on each).

Fills the ``card`` block (settings, val/test Recall@K both ways, mR, per-epoch val history, weight size) of
docs/MODEL_CARD.md; the prose around the block is written by hand and left untouched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from release.docs_blocks import update_page
from engine.evaluation.report import RECALL_KEYS, read_result

REPO = Path(__file__).resolve().parents[1]

HEADERS = ("| split | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | mR | mR 95% interval |\n"
           "|---|---|---|---|---|---|---|---|---|")


def _row(name: str, result: dict) -> str:
    """One table row; the interval is ``engine eval``'s image bootstrap (— where the result file has none)."""
    interval = (result.get("recalls_interval") or {}).get("bounds", {}).get("mR")
    cells = [f"{result['recalls'][key]:.2f}" for key in RECALL_KEYS] + [
        "{:.2f}–{:.2f}".format(*interval) if interval else "—"]
    return f"| {name} | " + " | ".join(cells) + " |"


def _instruction_recipe(settings: dict) -> str:
    tail = settings.get("unfreeze_last", 0)
    stages = "the last backbone stage" if tail == 1 else f"the last {tail} backbone stages"
    trained = (f"classifier and {stages}, lr ×{settings['backbone_lr_scale']} for the backbone"
               if tail else "classifier only, frozen backbone")
    return f"{trained}; {settings['epochs']} epochs over {settings['views']} views per image"


def _repo_relative(text: str) -> str:
    """A run's log names its data folders absolutely; the card names them from the repository root."""
    return text.replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")


def _views(result: dict) -> str:
    views = result.get("settings", {}).get("test_time_views") or 1
    return f"{views} view" + ("s" if views > 1 else "")


def _scoring(result: dict) -> str:
    bank = result.get("settings", {}).get("query_bank")
    return f", query bank (β {bank['beta']:g})" if bank else ", plain cosine"


def _split_row(result: dict) -> str:
    data = result["dataset"]
    return _row(f"{data['name']} {data['split']} ({data['images']} images / {data['captions']} captions), "
                f"{_views(result)}{_scoring(result)}", result)


def _start_line(config: dict, start_fingerprint: str | None) -> str:
    """Where a run that began from a trained model (``--init-from``) began."""
    known = f", fingerprint `{start_fingerprint[:16]}…`" if start_fingerprint else ""
    return (f"Training started from the trained model `{_repo_relative(config['init_from'])}` (`--init-from`{known}): "
            "its heads, trained tails and instruction classifier; the optimiser and schedule started fresh. "
            "The epochs below are this run's.")


def _start_fingerprint(spec: str) -> str | None:
    """The fingerprint of the model a run started from, while its folder (or shipped name) still resolves."""
    from encoders.checkpoint import model_folder, read_checkpoint_meta
    from engine.errors import ConfigError

    try:
        return read_checkpoint_meta(model_folder(spec)).get("fingerprint")
    except ConfigError:
        return None


def _soup_lines(members: list[Path]) -> list[str]:
    """The members of a shipped soup (``engine soup``), each with its fingerprint and training's val mR."""
    from encoders.checkpoint import read_checkpoint_meta

    lines = ["", f"The shipped model is a uniform soup (`engine soup`: the mean of the weights) of {len(members)} "
             "models of one lineage (a start and models trained on from it; the prose above gives each one's "
             "recipe, the settings table is the --run member's):", "",
             "| member | fingerprint | val mR (training's, float32) |", "|---|---|---|"]
    for folder in members:
        metrics = folder / "metrics.json"
        val = f"{json.loads(metrics.read_text())['mR']:.2f}" if metrics.is_file() else "not recorded"
        lines.append(f"| `{_repo_relative(str(folder.resolve()))}` | "
                     f"`{read_checkpoint_meta(folder)['fingerprint'][:16]}…` | {val} |")
    return lines


def render(run: Path, vals: list[dict], tests: list[dict], instruction: dict | None, weights: Path,
           also: list[dict], start_fingerprint: str | None = None, soup: list[Path] | None = None) -> str:
    config = json.loads((run / "train_config.json").read_text())
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
    first = tests[0]
    lines = [
        f"Evaluated with `engine eval` (exact search; ties by split order, pessimistic bound in the rows that say so), "
        f"commit `{first.get('git_commit', '?')}`, {first.get('created', '?')}; model fingerprint "
        f"`{first['model']['fingerprint'][:16]}…`. The interval is the spread of mR over resamples of the split's "
        "images, each with its captions (`engine eval --bootstrap`, 2.5th–97.5th percentile): how precisely the split measures the model's "
        "quality on such imagery; it is not a test between two models scored on the same split (that is paired).",
        "",
        HEADERS,
        *(_split_row(result) for result in vals),
        *(_split_row(result) for result in tests),
        *(_row(f"{test['dataset']['name']} test, {_views(test)}{_scoring(test)}, pessimistic ties",
               {"recalls": test["recalls_pessimistic"]}) for test in tests),
        *(_split_row(result) for result in also),
        "",
        "Training settings (`train_config.json` of the run; the val mR column below is training's own evaluation "
        "in float32, before the float16 storage of the shipped weights):",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | `{_repo_relative(json.dumps(config[key]))}` |" for key in sorted(config)),
    ]
    if config.get("init_from"):
        lines += ["", _start_line(config, start_fingerprint)]
    if soup:
        lines += _soup_lines(soup)
    if instruction is not None:
        lines += ["", f"Instruction encoder: held-out top-1 {100 * instruction['held_out_top1']:.2f}% on "
                  f"{instruction['split']['test_images']} AID images ({instruction['split']['train_images']} for "
                  f"training, split seed {instruction['split']['seed']}; "
                  f"{_instruction_recipe(instruction['settings'])}).", ]
    lines += ["", f"Shipped weights: `{weights.relative_to(REPO)}`, {weights.stat().st_size / 2**20:.2f} MiB."]
    if (run / "mix.json").is_file():
        mix = json.loads((run / "mix.json").read_text())
        lines += ["", "Training data (`mix.json` of the run):", "",
                  "| dataset | kind | training images | training pairs | held out |", "|---|---|---|---|---|"]
        lines += [f"| {s['name']} | {s['kind']} | {s['train_images']:,} | {s['train_captions']:,} | "
                  f"{s['held_out_images']:,} |" for s in mix["sources"]]
        lines += ["", *(f"- {_repo_relative(note)}" for note in mix["notes"] if not note.startswith("class '"))]
    if history:
        if soup:
            lines += ["", f"Training history of `{_repo_relative(str(run.resolve()))}` (one member):"]
        per_set = sorted({key.split(":")[0] for h in history for key in h["val"] if key.endswith(":mR")})
        extra = "".join(f" {name} val mR |" for name in per_set)
        lines += ["", f"| epoch | train loss | val mR |{extra} seconds |", "|---|---|---|" + "---|" * len(per_set)
                  + "---|"]
        lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['val']['mR']:.2f} | "
                  + "".join(f"{h['val'][f'{name}:mR']:.2f} | " for name in per_set) + f"{h['seconds']:.0f} |"
                  for h in history]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the engine train --out folder")
    parser.add_argument("--val", type=Path, nargs="+", required=True,
                        help="engine eval --split val --out JSON, one per dataset")
    parser.add_argument("--test", type=Path, nargs="+", required=True,
                        help="engine eval --split test --out JSON, one per dataset")
    parser.add_argument("--instruction", type=Path, default=None,
                        help="instruction_report.json (required unless the run started from a trained model)")
    parser.add_argument("--also", type=Path, nargs="*", default=[],
                        help="more engine eval JSONs of the shipped model (e.g. --test-time-views 1) to list")
    parser.add_argument("--soup", type=Path, nargs="+", default=None,
                        help="the checkpoint folders the shipped soup averages (engine soup); --run is one of them")
    parser.add_argument("--weights", type=Path, default=REPO / "encoders" / "weights" / "model.safetensors")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "MODEL_CARD.md")
    args = parser.parse_args()
    config = json.loads((args.run / "train_config.json").read_text())
    if args.instruction is None and not config.get("init_from"):
        parser.error("--instruction is required: the run trained its instruction classifier from "
                     "engine train-instruction's output")
    start_fingerprint = _start_fingerprint(config["init_from"]) if config.get("init_from") else None
    content = render(args.run, [read_result(path) for path in args.val], [read_result(path) for path in args.test],
                     json.loads(args.instruction.read_text()) if args.instruction else None, args.weights.resolve(),
                     [read_result(path) for path in args.also], start_fingerprint, args.soup)
    update_page(args.docs, "card", content)
    print(content)


if __name__ == "__main__":
    main()
