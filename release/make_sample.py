"""Rebuild ``engine/sample/``: the small real UCM-captions subset the engine runs on without ../shared.

Takes, for every one of the 21 classes, the first 8 train, 1 val and 1 test images (by ``imgid``) from a full
UCM-captions copy -- 210 images, split 168/21/21 like the full 1,680/210/210 -- and keeps their original file
names, ids, captions, classes and splits. Images are re-encoded as JPEG at ``--quality`` so the package stays
small. The output is written to a temporary folder and renamed into place.

    python -m release.make_sample [--source ../shared/data/ucm_captions] [--output engine/sample]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from engine.data import load_dataset
from engine.data.images import load_rgb

PER_CLASS = {"train": 8, "val": 1, "test": 1}
DEFAULT_QUALITY = 70
REPO = Path(__file__).resolve().parents[1]


def choose(source: Path) -> list[dict]:
    """The chosen Karpathy entries, in ``imgid`` order."""
    document = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    taken: dict[tuple[str, str], int] = defaultdict(int)
    chosen = []
    for entry in sorted(document["images"], key=lambda item: item["imgid"]):
        key = (entry["class"], entry["split"])
        if taken[key] < PER_CLASS[entry["split"]]:
            taken[key] += 1
            chosen.append(entry)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "ucm_captions")
    parser.add_argument("--output", type=Path, default=REPO / "engine" / "sample")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY)
    args = parser.parse_args()
    full = load_dataset(args.source)  # validates the source before anything is copied
    entries = choose(args.source)
    provenance_file = args.output / "PROVENANCE.md"  # hand-written; carried over unchanged
    provenance = provenance_file.read_text(encoding="utf-8") if provenance_file.is_file() else None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sample-", dir=args.output.parent))
    try:
        (staging / "images").mkdir()
        image_dir = full.images[0].path.parent
        for entry in entries:
            load_rgb(image_dir / entry["filename"]).save(
                staging / "images" / entry["filename"], format="JPEG", quality=args.quality, optimize=True
            )
        document = {"dataset": "ucm_captions_sample", "images": entries}
        (staging / "dataset.json").write_text(json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8")
        if provenance is not None:
            (staging / "PROVENANCE.md").write_text(provenance, encoding="utf-8")
        if args.output.exists():
            shutil.rmtree(args.output)
        staging.rename(args.output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    size = sum(path.stat().st_size for path in args.output.rglob("*") if path.is_file())
    print(f"{args.output}: {len(entries)} images, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
