"""Querybank normalisation (Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation", CVPR 2022; the
inverted-softmax form) of text→image search.

Some images sit close to very many captions ("hubs") and crowd the top of every result list. A bank of
*training* captions measures that once per image:

    offset(g) = (1/β) log Σ_b w_b exp(β b·g)          score(q, g) = q·g − offset(g)

(b: the bank's caption embeddings, w_b: how many training captions share that text). The offset is one number per
gallery image, known before any query arrives: nothing is learnt from the queries being scored. The bank is
stored beside the model (``query_bank.safetensors`` in its checkpoint folder) with the fingerprint of the model
that embedded it, and a bank of another model is refused. It is built by ``engine query-bank``
(``training.query_bank``); β is chosen on val (``bench/query_bank.py``, docs/ablations.md "Query bank").

Only text→image lists are normalised (search, ``engine eval``'s text→image recalls); image→text lists, image→image
search and zero-shot classification use the plain cosine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ConfigError

BANK_FILE = "query_bank.safetensors"
_CHUNK = 4096


@dataclass(frozen=True)
class QueryBank:
    texts: np.ndarray  # (n, dim) float32: embeddings of the distinct training captions
    log_weights: np.ndarray  # (n,) float64: log of how many training captions carry each text
    beta: float
    model_fingerprint: str  # the one-view fingerprint of the model that embedded the bank
    sources: str  # what the bank was built from, for records

    def image_offsets(self, images: np.ndarray) -> np.ndarray:
        """The amount each image's text→image score drops by, (num_images,) float32."""
        return bank_offsets(images, self.texts, self.beta, self.log_weights)

    def digest(self) -> str:
        """Identity of the bank's content (an index caches its offsets under it)."""
        digest = hashlib.sha256()
        for array in (self.texts.astype(np.float32), self.log_weights.astype(np.float64)):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(f"{self.beta!r}|{self.model_fingerprint}".encode())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        return {"beta": self.beta, "texts": int(len(self.texts)),
                "captions": int(round(float(np.exp(self.log_weights).sum()))), "sources": self.sources,
                "digest": self.digest()}


def bank_offsets(gallery: np.ndarray, bank: np.ndarray, beta: float, log_weights: np.ndarray | None = None
                 ) -> np.ndarray:
    """(1/β) log Σ_b w_b exp(β b·g) for every gallery row g, computed in bank chunks (stable log-sum-exp)."""
    import torch

    if beta <= 0 or not math.isfinite(beta):
        raise ConfigError(f"query bank: beta must be a positive number, got {beta}")
    rows = torch.from_numpy(np.require(gallery, np.float32, ["C", "W"]))
    total = torch.full((len(rows),), -torch.inf, dtype=torch.float64)
    for start in range(0, len(bank), _CHUNK):
        scores = (torch.from_numpy(np.ascontiguousarray(bank[start:start + _CHUNK], dtype=np.float32)) @ rows.T)
        scores = beta * scores.double()
        if log_weights is not None:
            scores = scores + torch.from_numpy(np.asarray(log_weights[start:start + _CHUNK], np.float64))[:, None]
        total = torch.logaddexp(total, torch.logsumexp(scores, 0))
    return (total / beta).numpy().astype(np.float32)


def save_bank(bank: QueryBank, folder: Path) -> Path:
    """Write ``folder/query_bank.safetensors`` atomically (texts in float16, as the shipped weights)."""
    import torch
    from safetensors.torch import save_file

    from engine.atomic import replace_atomically

    path = Path(folder) / BANK_FILE
    tensors = {"texts": torch.from_numpy(np.ascontiguousarray(bank.texts, np.float32)).half(),
               "log_weights": torch.from_numpy(np.ascontiguousarray(bank.log_weights, np.float64))}
    metadata = {"beta": repr(float(bank.beta)), "model_fingerprint": bank.model_fingerprint, "sources": bank.sources}
    replace_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata))
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
            texts = handle.get_tensor("texts").float().numpy()
            log_weights = handle.get_tensor("log_weights").double().numpy()
        beta = float(metadata["beta"])
        fingerprint = metadata["model_fingerprint"]
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as error:
        raise ConfigError(f"{path}: unreadable query bank ({error}); rebuild it with `engine query-bank`") from None
    if texts.ndim != 2 or texts.shape[1] != dim or log_weights.shape != (len(texts),) or not len(texts):
        raise ConfigError(f"{path}: query bank of shape {tuple(texts.shape)} with {log_weights.shape} weights does "
                          f"not fit a model of embedding width {dim}; rebuild it with `engine query-bank`")
    if fingerprint != model_fingerprint:
        raise ConfigError(f"{path}: embedded by model {fingerprint[:16]}…, not this folder's model "
                          f"({model_fingerprint[:16]}…); rebuild it with `engine query-bank`")
    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"{path}: beta must be a positive number, got {beta}")
    return QueryBank(texts, log_weights, beta, fingerprint, metadata.get("sources", ""))
