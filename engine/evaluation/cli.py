"""``engine eval``: exact Recall@K/mR of a model on a dataset split, and side-by-side comparison of results."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from engine.console import table_console
from engine.data.image_guard import MAX_PIXELS_HELP
from engine.errors import ConfigError, DataError
from engine.evaluation.report import (
    RECALL_KEYS,
    EvalResult,
    decode_ranks,
    encode_ranks,
    git_commit,
    plot_comparison,
    read_result,
    result_label,
    write_result,
)

HEADERS = ("I→T R@1", "I→T R@5", "I→T R@10", "T→I R@1", "T→I R@5", "T→I R@10", "mR")


def eval_command(
    paths: list[Path] = typer.Argument(None, help="DATA_DIR to evaluate, or result JSON files with --compare"),
    split: Optional[str] = typer.Option(None, help="split to evaluate (default test): train, val or test (an unsplit scene collection: "
                              "train or test = its fixed held-out part; with --zero-shot also all)"),
    model: Optional[str] = typer.Option(None, "--model", help="model folder (config.json + model.safetensors); default: the shipped model"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", hidden=True, help="old name of --model"),
    batch_size: int = typer.Option(64, min=1, help="images per encoder batch"),
    workers: int = typer.Option(0, min=0, help="DataLoader worker processes for image decoding"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    out: Optional[Path] = typer.Option(None, help="write the result JSON here"),
    label: Optional[str] = typer.Option(None, help="name of this run in comparisons"),
    json_output: bool = typer.Option(False, "--json", help="print the result as JSON"),
    compare: bool = typer.Option(False, "--compare", help="compare result JSON files instead of evaluating"),
    plot: Optional[Path] = typer.Option(None, help="with --compare: write a Recall@K bar plot (PNG) here; with "
                                        "--zero-shot: the confusion matrix"),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="zero-shot scene classification of a labelled "
                                   "dataset: class names through the fixed prompt set, top-1/top-5 accuracy"),
    index: Optional[Path] = typer.Option(None, "--index", help="score the embeddings this index holds, text→image "
                                         "through its faiss search (default: re-encode and search exactly)"),
    rerank: str = typer.Option("none", "--rerank", help="with --index: rerank text→image lists: none, aas or par-bonus"),
    rerank_depth: int = typer.Option(50, "--rerank-depth", help="with --rerank: first-stage images reranked per caption"),
    test_time_views: Optional[int] = typer.Option(None, "--test-time-views", help="dihedral views averaged per image "
                                                  "embedding, 1-8 (default: the model's own setting)"),
    images: Optional[Path] = typer.Option(None, "--images", help="image folder of a precomp DATA_DIR (default: "
                                          "RSICD_images/, images/ or the folder itself)"),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help=MAX_PIXELS_HELP),
    no_query_bank: bool = typer.Option(False, "--no-query-bank", help="score text→image by the plain cosine even "
                                       "when the model has a query bank (the protocol of the papers' tables)"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="draws of the 95% interval of every recall (the split's "
                                  "images resampled with their captions; fixed seed); 0: no interval"),
) -> None:
    """Evaluate image↔text retrieval exactly (PIR's protocol), or compare saved results side by side."""
    paths = list(paths or [])
    from engine import preflight
    from engine.data.image_guard import configure

    configure(max_image_pixels)

    checkpoint, model_flag = preflight.model_choice(model, checkpoint)
    if compare:
        compare_results(paths, plot, json_output)
        return
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap must be 0 (no interval) or a number of draws, got {bootstrap}")
    if len(paths) > 1:
        raise ConfigError("engine eval takes one DATA_DIR (use --compare to compare result files)")
    if zero_shot:  # --split defaults to what the model never trained on (engine.evaluation.zero_shot)
        if index is not None or rerank != "none":
            raise ConfigError("--zero-shot encodes the images itself: drop --index/--rerank")
        _zero_shot(paths[0] if paths else None, split, checkpoint, batch_size, workers, device, label, out, plot,
                   json_output, test_time_views, bootstrap)
        return
    if index is None and rerank != "none":
        raise ConfigError("--rerank needs --index INDEX_DIR (reranking reads the index's attention-feature cache)")
    if index is not None and test_time_views is not None:
        raise ConfigError("--test-time-views re-encodes images; with --index the index's own setting applies "
                          "(index.json test_time_views): rebuild the index with `engine index --test-time-views`")
    split = split or "test"
    _preflight(paths[0] if paths else None, split, checkpoint, device, out, index, model_flag)
    result = evaluate(paths[0] if paths else None, split, checkpoint, batch_size, workers, device, label,
                      index=index, rerank=rerank, rerank_depth=rerank_depth, test_time_views=test_time_views,
                      images=images, query_bank=not no_query_bank, bootstrap=bootstrap)
    if out is not None:
        write_result(result, out)
    if json_output:
        typer.echo(result.to_json())
    else:
        _print_table([(label or "model", {"recalls": result.recalls}),
                      ("  ties pessimistic", {"recalls": result.recalls_pessimistic})], title=_title(result))
        if result.recalls_interval:
            typer.echo(_interval_line(result.recalls_interval))
        if out is not None:
            typer.echo(f"result written to {out}")


def _preflight(data_dir: Path | None, split: str, checkpoint: str | None, device: str, out: Path | None,
               index: Path | None, model_flag: str = "--model") -> None:
    """Paths and flags checked before the data and model load (an evaluation can take many minutes)."""
    from engine import preflight

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")
    if data_dir is not None and not Path(data_dir).exists():
        raise DataError(f"{data_dir}: no such file or folder")
    preflight.check_device(device)
    preflight.check_checkpoint_folder(checkpoint, model_flag)
    if out is not None:
        preflight.check_output_file(out, "--out")
    if index is not None:
        from indexing.manifest import check_index_folder

        check_index_folder(index)


def evaluate(
    data_dir: Path | None, split: str, checkpoint: str | None, batch_size: int, workers: int, device: str,
    label: str | None = None, index: Path | None = None, rerank: str = "none", rerank_depth: int = 50,
    test_time_views: int | None = None, images: Path | None = None, query_bank: bool = True, bootstrap: int = 0,
) -> EvalResult:
    """Load data and model, encode the split and score it exactly, or (``index``) score what the index holds."""
    from engine.data import default_dataset_path, load_dataset

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")
    root = Path(data_dir) if data_dir is not None else default_dataset_path()
    dataset = load_dataset(root, images=images)
    if split == "val":  # a carved val split (no val published) is worth saying when it is the one scored
        for note in dataset.notes:
            typer.echo(f"note: {note}", err=True)
    subset = dataset.split(split)
    if not subset.images:
        raise DataError(f"{dataset.annotation_file or root}: no images in split {split!r}")

    import encoders
    from encoders.query_bank import with_offset_columns
    from engine.evaluation.embed import embed_split
    from engine.metrics import recall_intervals, recalls_from_ranks, retrieval_ranks, retrieval_recalls

    started = time.perf_counter()
    if index is not None:
        from engine.evaluation.index_eval import IndexEvalOptions, evaluate_on_index

        options = IndexEvalOptions(index_dir=Path(index), rerank=rerank, rerank_depth=rerank_depth,
                                   query_bank=query_bank, bootstrap=bootstrap)
        scored = evaluate_on_index(subset, checkpoint, options, device)
        return EvalResult(
            dataset=_dataset_record(dataset, root, split, subset),
            model={"spec": checkpoint or "shipped-default", "fingerprint": scored.fingerprint},
            search=scored.search, recalls=scored.recalls, recalls_pessimistic=scored.recalls_pessimistic,
            recalls_interval=scored.interval, ranks=encode_ranks(scored.ranks, scored.text_to_image),
            settings={"device": device, "label": label, "rerank": rerank, "rerank_depth": rerank_depth},
            git_commit=git_commit(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            seconds=round(time.perf_counter() - started, 2))
    model = encoders.load_model(checkpoint)
    if test_time_views is not None:
        model.set_test_time_views(test_time_views)
    embeddings = embed_split(model, subset, batch_size=batch_size, workers=workers, device=device)
    bank = model.query_bank if query_bank else None
    image_rows, text_rows = with_offset_columns(embeddings.images, embeddings.texts, bank)
    ranks = retrieval_ranks(image_rows, text_rows, embeddings.text_to_image)
    recalls = recalls_from_ranks(ranks)
    interval = recall_intervals(ranks, embeddings.text_to_image, bootstrap) if bootstrap else {}
    pessimistic = retrieval_recalls(image_rows, text_rows, embeddings.text_to_image, ties="pessimistic")
    return EvalResult(
        dataset=_dataset_record(dataset, root, split, subset),
        model={"spec": checkpoint or "shipped-default", "fingerprint": model.fingerprint()},
        search={"mode": "exact", "similarity": "dot product of L2-normalised embeddings" + (
            "; minus each gallery item's query-bank offset (encoders.query_bank)" if bank is not None else "")},
        recalls=recalls,
        recalls_pessimistic=pessimistic,
        recalls_interval=interval,
        ranks=encode_ranks(ranks, embeddings.text_to_image),
        settings={"batch_size": batch_size, "device": device, "label": label,
                  "test_time_views": model.config.vision.test_time_views,
                  "query_bank": bank.describe() if bank is not None else None},
        git_commit=git_commit(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 2),
    )


def _zero_shot(data_dir: Path | None, split: str | None, checkpoint: str | None, batch_size: int, workers: int,
               device: str, label: str | None, out: Path | None, plot: Path | None, json_output: bool,
               test_time_views: int | None, bootstrap: int) -> None:
    from engine.data import default_dataset_path
    from engine.evaluation.zero_shot import evaluate_zero_shot, plot_confusion, write_zero_shot

    if split not in (None, "train", "val", "test", "all"):
        raise ConfigError(f"--split must be train, val, test or all, got {split!r}")
    root = Path(data_dir) if data_dir is not None else default_dataset_path()
    result = evaluate_zero_shot(root, split, checkpoint, batch_size, workers, device, label, test_time_views, bootstrap)
    typer.echo(f"note: {result.dataset['split_rule']}", err=True)
    if out is not None:
        write_zero_shot(result, out)
    if plot is not None:
        plot_confusion(result, plot)
    if json_output:
        typer.echo(result.to_json())
        return
    table = Table(title=f"zero-shot {result.dataset['name']} {result.dataset['split']}: {result.dataset['images']} "
                        f"images, {result.dataset['classes']} classes, prompt set {result.prompts['set']}")
    for header, justify in (("class", "left"), ("images", "right"), ("top-1", "right"), ("top-5", "right"),
                            ("most confused with", "left")):
        table.add_column(header, justify=justify)
    for row in result.per_class:
        table.add_row(row["class"], str(row["images"]), _percent(row["top1"]), _percent(row["top5"]),
                      row["most_confused_with"] or "")
    accuracy = result.accuracy
    table.add_row("all", str(result.dataset["images"]), f"{accuracy['top1']:.2f}", f"{accuracy['top5']:.2f}",
                  f"mean per class {accuracy['mean_class_top1']:.2f}")
    table_console().print(table)
    if result.accuracy_interval:
        typer.echo(_accuracy_interval_line(result.accuracy_interval))
    for path, what in ((out, "result"), (plot, "confusion matrix")):
        if path is not None:
            typer.echo(f"{what} written to {path}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _dataset_record(dataset, root: Path, split: str, subset) -> dict:
    return {"name": dataset.name, "kind": dataset.kind, "root": str(root), "split": split,
            "images": len(subset.images), "captions": len(subset.captions)}


def compare_results(paths: list[Path], plot: Path | None, json_output: bool) -> None:
    if len(paths) < 1:
        raise ConfigError("--compare needs at least one result JSON file")
    from engine.evaluation.zero_shot import is_zero_shot_file

    kinds = {is_zero_shot_file(path) for path in paths}
    if kinds == {True}:
        _compare_zero_shot(paths, json_output)
        return
    if len(kinds) > 1:
        raise ConfigError("--compare: mixes zero-shot and retrieval result files; compare each kind on its own")
    rows = [(result_label(path, data), data) for path, data in ((p, read_result(p)) for p in paths)]
    splits = {(data["dataset"].get("name"), data["dataset"].get("split")) for _, data in rows}
    paired = _paired_retrieval(paths, rows) if len(splits) == 1 else []
    if json_output:
        typer.echo(json.dumps(_with_paired({label: data["recalls"] for label, data in rows}, paired), indent=2))
    else:
        _print_table(rows, title="comparison")
        for line in _paired_text(paired, "mR", "mR"):
            typer.echo(line)
        if len(splits) > 1:
            typer.echo(f"warning: results come from different datasets/splits: {sorted(map(str, splits))}", err=True)
    if plot is not None:
        plot_comparison(rows, plot)
        typer.echo(f"plot written to {plot}")


def _paired_retrieval(paths: list[Path], rows: list[tuple[str, dict]]) -> list[dict]:
    """Each later run's mR minus the first's, with a paired image-bootstrap interval, where both files hold ranks."""
    import numpy as np

    from engine.metrics import paired_difference

    stored = [(path, label, data) for path, (label, data) in zip(paths, rows) if data.get("ranks")]
    out = _lacking_ranks(rows)
    if len(stored) < 2:
        return out
    decoded = [(label, *decode_ranks(path, data)) for path, label, data in stored]
    base_label, base_ranks, base_owner = decoded[0]
    for label, ranks, owner in decoded[1:]:
        if not np.array_equal(owner, base_owner):
            out.append({"run": label, "base": base_label, "not_paired": "their captions belong to different images"})
            continue
        out.append({"run": label, "base": base_label, "images": int(len(base_ranks.image_to_text)),
                    **paired_difference(base_ranks, ranks, owner)})
    return out


def _lacking_ranks(rows: list[tuple[str, dict]]) -> list[dict]:
    """The records of files without ranks (written before engine eval kept them), when there is anything to pair."""
    return [{"run": label, "lacks_ranks": True} for label, data in rows if not data.get("ranks")] if len(rows) > 1 else []


def _paired_text(paired: list[dict], name: str, key: str) -> list[str]:
    """The lines ``--compare`` prints for ``_paired_retrieval`` / ``_paired_zero_shot`` records."""
    lacking = [record["run"] for record in paired if record.get("lacks_ranks")]
    lines = [f"no paired difference for {', '.join(lacking)}: the result file holds no ranks (re-run engine eval)"
             ] if lacking else []  # files written before engine eval kept ranks, or edited by hand
    for record in paired:
        if record.get("lacks_ranks"):
            continue
        if "not_paired" in record:
            lines.append(f"{record['run']}: not paired with {record['base']} ({record['not_paired']})")
            continue
        low, high = record["bounds"]
        lines.append(f"{record['run']} − {record['base']}: {name} {record[key]:+.2f}, paired {record['level']:g}% "
                     f"interval {low:+.2f} to {high:+.2f} ({record['draws']} draws of the {record['images']:,} "
                     f"images; above zero in {100 * record['share_above_zero']:.1f}% of them)")
    return lines


PAIRED_KEY = "paired differences"  # where --compare --json puts them, beside one entry per run


def _with_paired(by_label: dict, paired: list[dict]) -> dict:
    if paired and PAIRED_KEY in by_label:
        raise ConfigError(f"--compare --json: a run is labelled {PAIRED_KEY!r}, the key the paired differences use; "
                          "rename its file or re-run it with another --label")
    return {**by_label, PAIRED_KEY: paired} if paired else by_label


def _compare_zero_shot(paths: list[Path], json_output: bool) -> None:
    from engine.evaluation.zero_shot import read_zero_shot

    rows = [(str(data.get("settings", {}).get("label") or path.stem), data)
            for path, data in ((p, read_zero_shot(p)) for p in paths)]
    paired = _paired_zero_shot(paths, rows)
    if json_output:
        typer.echo(json.dumps(_with_paired({label: data["accuracy"] for label, data in rows}, paired), indent=2))
        return
    intervals = [data.get("accuracy_interval") or {} for _, data in rows]
    shown = next((interval["level"] for interval in intervals if interval), None)
    table = Table(title="zero-shot comparison")
    headers = ["run", "dataset", "images", "top-1", "top-5", "mean per class"]
    headers += [f"top-1 {shown:g}% interval"] if shown is not None else []
    for header in headers:
        table.add_column(header, justify="left" if header in ("run", "dataset") else "right")
    for (label, data), interval in zip(rows, intervals):
        accuracy = data["accuracy"]
        cells = [label, f"{data['dataset']['name']} {data['dataset']['split']}", str(data["dataset"]["images"]),
                 f"{accuracy['top1']:.2f}", f"{accuracy['top5']:.2f}", f"{accuracy['mean_class_top1']:.2f}"]
        if shown is not None:
            cells.append("{:.2f}–{:.2f}".format(*interval["bounds"]["top1"]) if interval else "-")
        table.add_row(*cells)
    table_console().print(table)
    for line in _paired_text(paired, "top-1", "top1"):
        typer.echo(line)


def _paired_zero_shot(paths: list[Path], rows: list[tuple[str, dict]]) -> list[dict]:
    """Each later run's top-1 minus the first's, paired on the same images, where both files hold class ranks."""
    import numpy as np

    from engine.evaluation.report import decode_class_ranks
    from engine.metrics import paired_accuracy_difference

    decoded = [(label, data, *decode_class_ranks(path, data)) for path, (label, data) in zip(paths, rows)
               if data.get("ranks")]
    out = _lacking_ranks(rows)
    if len(decoded) < 2:
        return out
    base_label, base_data, base_ranks, base_labels = decoded[0]
    for label, data, ranks, labels in decoded[1:]:
        # the same split's images in the same order, by label and class list (a dataset's resized copy pairs too)
        same = (np.array_equal(labels, base_labels) and data["dataset"].get("split") == base_data["dataset"].get("split")
                and _class_list(data) == _class_list(base_data))
        if not same:
            out.append({"run": label, "base": base_label, "not_paired": "another split, other labels or classes"})
            continue
        out.append({"run": label, "base": base_label, "images": int(labels.size),
                    **paired_accuracy_difference(base_ranks, ranks, labels)})
    return out


def _class_list(data: dict) -> list | None:
    confusion = data.get("confusion")
    return confusion.get("classes") if isinstance(confusion, dict) else None


def _title(result: EvalResult) -> str:
    data, search = result.dataset, result.search
    how = "exact search"
    if search.get("mode") == "index":
        params = ", ".join(f"{name} {value}" for name, value in search.get("search_params", {}).items())
        how = (f"index {search['factory']}{' (' + params + ')' if params else ''}, "
               f"{'exact' if search['exact'] else 'approximate'} text→image search depth {search['depth']}, "
               "exact image→text over stored captions")
        if search["rerank"]["method"] != "none":
            latency = search["rerank"]["latency_per_query"]
            how += (f", rerank {search['rerank']['method']} depth {search['rerank']['depth']} "
                    f"(p50 {latency.get('p50_ms', 0):.1f} ms, p95 {latency.get('p95_ms', 0):.1f} ms per query)")
    views = result.settings.get("test_time_views") or search.get("test_time_views") or 1
    if views > 1:
        how += f", {views} dihedral image views averaged"
    bank = result.settings.get("query_bank") or search.get("query_bank")
    if bank:
        how += (f", query-bank normalised {' and '.join(bank.get('directions', ['text→image']))} (β {bank['beta']:g}, "
                f"{bank['texts']} bank captions, {bank.get('images', 0)} bank images)")
    return f"{data['name']} {data['split']}: {data['images']} images, {data['captions']} captions, {how}"


def _interval_line(interval: dict) -> str:
    low, high = interval["bounds"]["mR"]
    return (f"mR {interval['level']:g}% interval {low:.2f}–{high:.2f} ({interval['draws']} draws of the split's images, "
            "each with its captions: how precisely this split measures the model)")


def _accuracy_interval_line(interval: dict) -> str:
    bounds = interval["bounds"]
    parts = ", ".join(f"{name} {bounds[key][0]:.2f}–{bounds[key][1]:.2f}" for key, name in (
        ("top1", "top-1"), ("top5", "top-5"), ("mean_class_top1", "mean per class")) if key in bounds)
    return (f"{interval['level']:g}% intervals: {parts} ({interval['draws']} draws of the split's images: how precisely "
            "this split measures the model)")


def _print_table(rows: list[tuple[str, dict]], title: str) -> None:
    table = Table(title=title)
    table.add_column("run")
    for header in HEADERS:
        table.add_column(header, justify="right")
    intervals = [data.get("recalls_interval") or {} for _, data in rows]
    shown = next((interval["level"] for interval in intervals if interval), None)  # the first file's level
    if shown is not None:
        table.add_column(f"mR {shown:g}% interval", justify="right")
    for (label, data), interval in zip(rows, intervals):
        cells = [f"{data['recalls'][key]:.2f}" for key in RECALL_KEYS]
        if shown is not None:
            cells.append("{:.2f}–{:.2f}".format(*interval["bounds"]["mR"]) if interval else "-")
        table.add_row(label, *cells)
    table_console().print(table)
