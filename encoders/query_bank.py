"""Querybank normalisation (Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation", CVPR 2022; the
inverted-softmax form) of cross-modal search.

Some gallery items sit close to very many queries ("hubs") and crowd the top of every result list. A bank of
*training* queries measures that once per gallery item:

    offset(g) = (1/β) log Σ_b w_b exp(β b·g)          score(q, g) = q·g − offset(g)

For text→image search the bank is the training captions (b: their embeddings, w_b: how many training captions
share that text) and g an image; for image→text search (``--target captions``) the bank is the training images and
g a caption. The offset is one number per gallery item, known before any query arrives: nothing is learnt from the
queries being scored. A bank may hold either part or both; each part normalises its own direction. The bank is
stored beside the model (``query_bank.safetensors`` in its checkpoint folder) with the fingerprint of the model
that embedded it, and a bank of another model is refused. It is built by ``engine query-bank``
(``training.query_bank``); β is chosen on val (``bench/query_bank.py``, docs/ablations.md "Query bank").

Image→image search and zero-shot classification use the plain cosine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ConfigError

BANK_FILE = "query_bank.safetensors"
_CHUNK_ELEMENTS = 1 << 25  # scores held at once by bank_offsets (32 M float32 = 128 MB)


@dataclass(frozen=True)
class QueryBank:
    texts: np.ndarray | None  # (n, dim) float32: embeddings of the distinct training captions (text→image)
    log_weights: np.ndarray | None  # (n,) float64: log of how many training captions carry each text
    images: np.ndarray | None  # (m, dim) float32: embeddings of the training images (image→text)
    beta: float
    model_fingerprint: str  # the one-view fingerprint of the model that embedded the bank
    sources: str  # what the bank was built from, for records
    image_log_weights: np.ndarray | None = None  # (m,) float64 log weight of each bank image; None: all equal

    @property
    def text_to_image(self) -> bool:
        return self.texts is not None

    @property
    def image_to_text(self) -> bool:
        return self.images is not None

    def image_offsets(self, images: np.ndarray) -> np.ndarray:
        """The amount each image's text→image score drops by, (num_images,) float32 (zeros without captions)."""
        if self.texts is None:
            return np.zeros(len(images), np.float32)
        return bank_offsets(images, self.texts, self.beta, self.log_weights)

    def text_offsets(self, texts: np.ndarray) -> np.ndarray:
        """The amount each caption's image→text score drops by, (num_texts,) float32 (zeros without images)."""
        if self.images is None:
            return np.zeros(len(texts), np.float32)
        return bank_offsets(texts, self.images, self.beta, self.image_log_weights)

    def digest(self) -> str:
        """Identity of the bank's content."""
        digest = hashlib.sha256()
        for array in (self.texts, self.log_weights, self.images):
            digest.update(b"-" if array is None else np.ascontiguousarray(array, np.float64).tobytes())
        if self.image_log_weights is not None:
            digest.update(np.ascontiguousarray(self.image_log_weights, np.float64).tobytes())
        digest.update(f"{self.beta!r}|{self.model_fingerprint}".encode())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        return {"beta": self.beta, "directions": [name for name, on in (("text→image", self.text_to_image),
                                                                          ("image→text", self.image_to_text)) if on],
                "texts": int(len(self.texts)) if self.texts is not None else 0,
                "captions": int(round(float(np.exp(self.log_weights).sum()))) if self.texts is not None else 0,
                "images": int(len(self.images)) if self.images is not None else 0,
                "sources": self.sources, "digest": self.digest()}


def with_offset_columns(images: np.ndarray, texts: np.ndarray, bank: "QueryBank | None"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Image rows [g, −offset(g), 1] and text rows [t, 1, −offset(t)]: every image·text inner product becomes
    cosine − the gallery item's offset + a constant of the query, so exact search over these rows ranks both
    directions normalised (a direction the bank does not hold gets zero offsets). No bank: the rows as they are."""
    if bank is None:
        return images, texts
    image_rows = np.hstack([images, -bank.image_offsets(images)[:, None], np.ones((len(images), 1))])
    text_rows = np.hstack([texts, np.ones((len(texts), 1)), -bank.text_offsets(texts)[:, None]])
    return image_rows.astype(np.float32), text_rows.astype(np.float32)


def bank_offsets(gallery: np.ndarray, bank: np.ndarray, beta: float, log_weights: np.ndarray | None = None
                 ) -> np.ndarray:
    """(1/β) log Σ_b w_b exp(β b·g) for every gallery row g: float32 log-sum-exp over the whole bank, the gallery
    taken in chunks (a chunk's score matrix stays near 128 MB whatever the bank size)."""
    import torch

    if beta <= 0 or not math.isfinite(beta):
        raise ConfigError(f"query bank: beta must be a positive number, got {beta}")
    bank_t = torch.from_numpy(np.require(bank, np.float32, ["C", "W"]))
    weights = (torch.from_numpy(np.require(log_weights, np.float32, ["C", "W"]))[None, :]
               if log_weights is not None else None)
    rows = torch.from_numpy(np.require(gallery, np.float32, ["C", "W"]))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(bank)))
    out = torch.empty(len(rows), dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            scores = (rows[start:start + chunk] @ bank_t.T).mul_(beta)
            if weights is not None:
                scores.add_(weights)
            out[start:start + chunk] = torch.logsumexp(scores, dim=1) / beta
    return out.numpy()


def save_bank(bank: QueryBank, folder: Path) -> Path:
    """Write ``folder/query_bank.safetensors`` atomically (texts in float16, as the shipped weights)."""
    import torch
    from safetensors.torch import save_file

    from engine.atomic import make_readable, replace_atomically

    path = Path(folder) / BANK_FILE
    tensors = {}
    if bank.texts is not None:
        tensors["texts"] = torch.from_numpy(np.ascontiguousarray(bank.texts, np.float32)).half()
        tensors["log_weights"] = torch.from_numpy(np.ascontiguousarray(bank.log_weights, np.float64))
    if bank.images is not None:
        tensors["images"] = torch.from_numpy(np.ascontiguousarray(bank.images, np.float32)).half()
        if bank.image_log_weights is not None:
            tensors["image_log_weights"] = torch.from_numpy(np.ascontiguousarray(bank.image_log_weights, np.float64))
    metadata = {"beta": repr(float(bank.beta)), "model_fingerprint": bank.model_fingerprint, "sources": bank.sources}
    replace_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata))
    make_readable(path)  # safetensors writes 0600; a bank shipped in the package must load for every user
    return path


def read_bank(folder: Path, model_fingerprint: str, dim: int) -> QueryBank | None:
    """The bank stored in a checkpoint folder, or None when it has none; a bank that does not fit the model
    (another model's, another width, unreadable) is a one-line ``ConfigError``."""
    path = Path(folder) / BANK_FILE
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            texts = handle.get_tensor("texts").float().numpy() if "texts" in names else None
            log_weights = handle.get_tensor("log_weights").double().numpy() if "texts" in names else None
            images = handle.get_tensor("images").float().numpy() if "images" in names else None
            image_weights = (handle.get_tensor("image_log_weights").double().numpy()
                             if "image_log_weights" in names else None)
        beta = float(metadata["beta"])
        fingerprint = metadata["model_fingerprint"]
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as error:
        raise ConfigError(f"{path}: unreadable query bank ({error}); rebuild it with `engine query-bank`") from None
    for name, part in (("texts", texts), ("images", images)):
        if part is not None and (part.ndim != 2 or part.shape[1] != dim or not len(part)):
            raise ConfigError(f"{path}: query bank {name} of shape {tuple(part.shape)} do not fit a model of "
                              f"embedding width {dim}; rebuild it with `engine query-bank`")
    if texts is None and images is None:
        raise ConfigError(f"{path}: query bank holds neither texts nor images; rebuild it with `engine query-bank`")
    if texts is not None and log_weights.shape != (len(texts),):
        raise ConfigError(f"{path}: query bank has {len(texts)} texts but {log_weights.shape} weights; rebuild it "
                          "with `engine query-bank`")
    if fingerprint != model_fingerprint:
        raise ConfigError(f"{path}: embedded by model {fingerprint[:16]}…, not this folder's model "
                          f"({model_fingerprint[:16]}…); rebuild it with `engine query-bank`")
    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"{path}: beta must be a positive number, got {beta}")
    if image_weights is not None and (images is None or image_weights.shape != (len(images),)):
        raise ConfigError(f"{path}: query bank image weights of shape {image_weights.shape} do not match its "
                          "images; rebuild it with `engine query-bank`")
    return QueryBank(texts, log_weights, images, beta, fingerprint, metadata.get("sources", ""), image_weights)
