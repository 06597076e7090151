"""Near-duplicate images across datasets: a perceptual hash finds candidates, a thumbnail correlation confirms them.

Why: RSICD, AID and UCM draw on the same public imagery (Google Earth, USGS orthophotos), resized and re-encoded
differently, so byte equality misses copies. A training image that is a resized or recompressed copy of a val or
test image would leak the answer into training.

How:
- *pHash*: the image as 32 x 32 grey levels, its 2-D DCT, the 8 x 8 lowest frequencies without the DC term
  compared with their median: 63 bits that survive resizing, JPEG re-encoding and small colour shifts.
- candidates: Hamming distance <= ``MAX_HASH_DISTANCE``;
- confirmed when the 16 x 16 grey thumbnails, centred and normalised, correlate >= ``MIN_CORRELATION``. Flat
  scenes (sea, desert, bare land) have near-random low-frequency signs, so their hashes collide by chance; their
  normalised thumbnails are noise and do not correlate, which keeps such pairs apart.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HASH_SIDE = 32  # grey image the DCT runs on
HASH_FREQUENCIES = 8  # lowest DCT frequencies per axis that make the hash
THUMB_SIDE = 16  # grey thumbnail of the confirming correlation
MAX_HASH_DISTANCE = 10  # of 63 bits
MIN_CORRELATION = 0.9
_WORKERS = 4  # PIL releases the GIL while decoding
_CHUNK = 2048  # candidates compared against all references at once


def _dct_matrix(size: int) -> np.ndarray:
    positions = np.arange(size)
    matrix = np.cos(np.pi * (2 * positions[None, :] + 1) * positions[:, None] / (2 * size))
    matrix[0] *= 1 / np.sqrt(2)
    return matrix * np.sqrt(2 / size)


_DCT = _dct_matrix(HASH_SIDE)
_BIT_WEIGHTS = (1 << np.arange(HASH_FREQUENCIES * HASH_FREQUENCIES - 1, dtype=np.uint64)).astype(np.uint64)


@dataclass(frozen=True)
class Fingerprints:
    """Hashes (N,) uint64 and normalised thumbnails (N, THUMB_SIDE²) float32 of N images, in input order."""

    hashes: np.ndarray
    thumbs: np.ndarray


def _fingerprint(path: Path) -> tuple[int, np.ndarray]:
    from PIL import Image

    from engine.data.image_guard import open_image
    from engine.errors import DataError

    try:
        with open_image(Path(path)) as image:
            image.draft("L", (HASH_SIDE * 2, HASH_SIDE * 2))  # JPEG: decode at a reduced scale (much faster)
            grey = image.convert("L")
    except (OSError, ValueError, DataError, Image.DecompressionBombError):
        return 0, np.zeros(THUMB_SIDE ** 2, np.float32)  # unreadable: a zero thumbnail confirms no match
    pixels = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), dtype=np.float64)
    frequencies = (_DCT @ pixels @ _DCT.T)[:HASH_FREQUENCIES, :HASH_FREQUENCIES].reshape(-1)[1:]
    bits = (frequencies > np.median(frequencies)).astype(np.uint64)
    thumb = np.asarray(grey.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.float32).reshape(-1)
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return int((bits * _BIT_WEIGHTS).sum()), (thumb / norm if norm > 0 else thumb)


def fingerprints(paths: list[Path]) -> Fingerprints:
    """Fingerprints of ``paths`` (decoded on a few threads)."""
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        results = list(pool.map(_fingerprint, paths, chunksize=64))
    hashes = np.array([h for h, _ in results], dtype=np.uint64)
    thumbs = np.stack([t for _, t in results]) if results else np.zeros((0, THUMB_SIDE ** 2), np.float32)
    return Fingerprints(hashes, thumbs.astype(np.float32))


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def duplicate_of(candidates: Fingerprints, references: Fingerprints, max_distance: int = MAX_HASH_DISTANCE,
                 min_correlation: float = MIN_CORRELATION) -> np.ndarray:
    """For each candidate, the position of a reference it duplicates (the most correlated), or -1."""
    found = np.full(len(candidates.hashes), -1, dtype=np.int64)
    if not len(references.hashes):
        return found
    for start in range(0, len(candidates.hashes), _CHUNK):
        hashes = candidates.hashes[start:start + _CHUNK]
        close = _popcount(hashes[:, None] ^ references.hashes[None, :]) <= max_distance
        rows, columns = np.nonzero(close)
        if not len(rows):
            continue
        correlation = np.einsum("ij,ij->i", candidates.thumbs[start + rows], references.thumbs[columns])
        confirmed = correlation >= min_correlation
        best: dict[int, tuple[float, int]] = {}
        for row, column, value in zip(rows[confirmed], columns[confirmed], correlation[confirmed]):
            if value > best.get(int(row), (-2.0, -1))[0]:
                best[int(row)] = (float(value), int(column))
        for row, (_, column) in best.items():
            found[start + row] = column
    return found
