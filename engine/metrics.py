"""Exact Recall@K for image-text retrieval, the protocol the RS retrieval papers report.

image→text: an image's rank is the best rank among its own captions over all captions of the split.
text→image: a caption's rank is the rank of its one image over all images of the split.
R@K = % of queries whose 0-based rank < K; mR = mean of i2t R@1/5/10 and t2i R@1/5/10.

Ties matter: UCM/RSICD hold many identical caption strings across images (only 377 of UCM's 1,050 test
captions are distinct), and identical strings get identical embeddings (``engine eval``, training's evaluation
and ``engine index`` encode each distinct string once: ``engine.text_encoding``), so an image's own caption ties
exactly with the same sentence written for other images. Two deterministic rules are offered:

- ``ties="index"`` (the default, comparable with published numbers): a stable descending sort; among equal
  scores the item listed first in the split (lower position) ranks first. This is what a stable ``argsort`` of
  the score row gives, the convention of the reference evaluation code.
- ``ties="pessimistic"`` (a lower bound): every non-matching item with a score greater than **or equal to**
  the best matching score ranks above it. It cannot flatter a model; ``engine eval`` reports it beside the
  default so the spread caused by duplicate captions is visible.

The similarity matrix is never materialised whole: queries are processed in chunks, so RSICD-size test sets
(1,093 × 5,465) and much larger ones fit in little memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalRanks:
    """0-based ranks of every query; -1 marks an image with no caption (it cannot be an i2t query)."""

    image_to_text: np.ndarray  # (num_images,)
    text_to_image: np.ndarray  # (num_texts,)


def _as_float32_matrix(name: str, values) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (count, dim) array, got shape {array.shape}")
    return array


TIE_RULES = ("index", "pessimistic")


def retrieval_ranks(
    image_emb, text_emb, text_to_image, chunk_size: int = 512, ties: str = "index"
) -> RetrievalRanks:
    """Ranks of every image query (i2t) and text query (t2i) under exact dot-product similarity."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    images = _as_float32_matrix("image_emb", image_emb)
    texts = _as_float32_matrix("text_emb", text_emb)
    owner = np.asarray(text_to_image, dtype=np.int64)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"embedding dims differ: images {images.shape[1]}, texts {texts.shape[1]}")
    if owner.shape != (texts.shape[0],):
        raise ValueError(f"text_to_image must have one entry per text ({texts.shape[0]}), got {owner.shape}")
    if owner.size and (owner.min() < 0 or owner.max() >= images.shape[0]):
        raise ValueError("text_to_image holds positions outside the image array")

    image_ranks = np.full(images.shape[0], -1, dtype=np.int64)
    for start in range(0, images.shape[0], chunk_size):
        stop = min(start + chunk_size, images.shape[0])
        scores = images[start:stop] @ texts.T  # (chunk, num_texts)
        is_own = owner[None, :] == np.arange(start, stop)[:, None]
        has_caption = is_own.any(axis=1)
        best_own = np.where(is_own, scores, -np.inf).max(axis=1, initial=-np.inf)
        above = (scores > best_own[:, None]) & ~is_own
        tied = (scores == best_own[:, None]) & ~is_own
        if ties == "index":  # only ties listed before the first own caption that reaches the best score
            first_best = np.argmax(is_own & (scores == best_own[:, None]), axis=1)
            tied &= np.arange(texts.shape[0])[None, :] < first_best[:, None]
        image_ranks[start:stop] = np.where(has_caption, (above | tied).sum(axis=1), -1)

    text_ranks = np.empty(texts.shape[0], dtype=np.int64)
    for start in range(0, texts.shape[0], chunk_size):
        stop = min(start + chunk_size, texts.shape[0])
        scores = texts[start:stop] @ images.T  # (chunk, num_images)
        own_score = scores[np.arange(stop - start), owner[start:stop]]
        above = (scores > own_score[:, None]).sum(axis=1)
        tied = scores == own_score[:, None]
        if ties == "index":
            tied &= np.arange(images.shape[0])[None, :] < owner[start:stop, None]
            text_ranks[start:stop] = above + tied.sum(axis=1)
        else:  # the true image itself is among the ties: subtract it once
            text_ranks[start:stop] = above + tied.sum(axis=1) - 1
    return RetrievalRanks(image_to_text=image_ranks, text_to_image=text_ranks)


def recalls_from_ranks(ranks: RetrievalRanks, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Recall@K in percent for both directions, and mR = their mean; image queries without captions skipped."""
    image_queries = ranks.image_to_text[ranks.image_to_text >= 0]
    result: dict[str, float] = {}
    for k in ks:
        result[f"i2t_r{k}"] = float((image_queries < k).mean() * 100) if image_queries.size else 0.0
    for k in ks:
        result[f"t2i_r{k}"] = float((ranks.text_to_image < k).mean() * 100) if ranks.text_to_image.size else 0.0
    result["mR"] = float(np.mean([result[f"i2t_r{k}"] for k in ks] + [result[f"t2i_r{k}"] for k in ks]))
    return result


def retrieval_recalls(
    image_emb, text_emb, text_to_image, ks: tuple[int, ...] = DEFAULT_KS, chunk_size: int = 512,
    ties: str = "index",
) -> dict[str, float]:
    """Exact i2t/t2i Recall@K and mR (percent). ``text_to_image[j]`` = row of caption j's image."""
    return recalls_from_ranks(retrieval_ranks(image_emb, text_emb, text_to_image, chunk_size, ties), ks)


def _image_hits(ranks: RetrievalRanks, text_to_image, ks: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Per image: whether it is an i2t query, its i2t hits at each K, its captions, their t2i hits at each K."""
    owner = np.asarray(text_to_image, dtype=np.int64)
    num_images = ranks.image_to_text.shape[0]
    if owner.shape != ranks.text_to_image.shape:
        raise ValueError(f"text_to_image must have one entry per text rank ({ranks.text_to_image.shape[0]}), "
                         f"got {owner.shape}")
    is_query = ranks.image_to_text >= 0
    i2t = np.stack([is_query & (ranks.image_to_text < k) for k in ks]).astype(np.float64)  # (K, images)
    captions = np.bincount(owner, minlength=num_images).astype(np.float64)
    t2i = np.stack([np.bincount(owner, weights=(ranks.text_to_image < k).astype(np.float64), minlength=num_images)
                    for k in ks])
    return is_query.astype(np.float64), i2t, captions, t2i


def bootstrap_recalls(ranks: RetrievalRanks, text_to_image, draws: int = 1000, seed: int = 0,
                      ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Recall@K and mR (percent) of ``draws`` resamples of the split's images, each image with all its captions.

    The gallery stays the whole split (the ranks are not recomputed): this measures how much the score depends
    on which images happened to be in the test split, the uncertainty a reader of a table needs when two models
    differ by less than a point. Images, not queries, are the unit because an image's captions are not
    independent queries (RSICD repeats one sentence five times for many images).
    """
    return bootstrap_paired([ranks], text_to_image, draws, seed, ks)[0]


def bootstrap_paired(rank_sets: list[RetrievalRanks], text_to_image, draws: int = 1000, seed: int = 0,
                     ks: tuple[int, ...] = DEFAULT_KS, chunk: int = 256) -> list[dict[str, np.ndarray]]:
    """``bootstrap_recalls`` of several models scored on one split, every model on the same resamples.

    Sharing the draws makes the models' differences paired: the image-to-image variation both models see
    cancels, so a difference between two models is judged far more sharply than by their separate intervals.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    hit_sets = [_image_hits(ranks, text_to_image, ks) for ranks in rank_sets]
    num_images = hit_sets[0][0].shape[0]
    if any(hits[0].shape[0] != num_images for hits in hit_sets):
        raise ValueError("paired bootstrap: the rank sets hold different numbers of images")
    rng = np.random.default_rng(seed)
    columns = [{f"{d}_r{k}": [] for d in ("i2t", "t2i") for k in ks} for _ in rank_sets]
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        counts = rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=size).astype(np.float64)
        for (is_query, i2t, captions, t2i), out in zip(hit_sets, columns):
            for hits, total, direction in ((i2t, counts @ is_query, "i2t"), (t2i, counts @ captions, "t2i")):
                found = counts @ hits.T  # (size, K)
                share = np.divide(found, total[:, None], out=np.zeros_like(found), where=total[:, None] > 0) * 100
                for column, k in enumerate(ks):
                    out[f"{direction}_r{k}"].append(share[:, column])
    results = []
    for out in columns:
        result = {key: np.concatenate(parts) for key, parts in out.items()}
        result["mR"] = np.mean(np.stack(list(result.values())), axis=0)
        results.append(result)
    return results


def _check_level(level: float) -> None:
    if not 0 < level < 100:
        raise ValueError(f"level must be between 0 and 100 (percent), got {level}")


def _percentile_bounds(values: np.ndarray, level: float) -> list[float]:
    _check_level(level)
    tail = (100 - level) / 2
    return [round(float(np.percentile(values, tail)), 2), round(float(np.percentile(values, 100 - tail)), 2)]


def recall_intervals(ranks: RetrievalRanks, text_to_image, draws: int = 1000, level: float = 95.0,
                     seed: int = 0, ks: tuple[int, ...] = DEFAULT_KS) -> dict:
    """Percentile bootstrap intervals of every Recall@K and mR (``bootstrap_recalls``), ready for a result file."""
    _check_level(level)  # before drawing
    samples = bootstrap_recalls(ranks, text_to_image, draws, seed, ks)
    bounds = {key: _percentile_bounds(values, level) for key, values in samples.items()}
    return {"level": level, "draws": draws, "seed": seed, "resampled": "images of the split, each with all its "
            "captions (the gallery stays the whole split)", "bounds": bounds}


def paired_difference(first: RetrievalRanks, second: RetrievalRanks, text_to_image, draws: int = 1000,
                      level: float = 95.0, seed: int = 0) -> dict:
    """mR of ``second`` minus ``first`` on one split, with its paired bootstrap interval (``bootstrap_paired``)."""
    _check_level(level)
    one, two = bootstrap_paired([first, second], text_to_image, draws, seed)
    point = recalls_from_ranks(second)["mR"] - recalls_from_ranks(first)["mR"]
    return {"mR": round(point, 2), "bounds": _percentile_bounds(two["mR"] - one["mR"], level), "level": level,
            "draws": draws, "share_above_zero": round(float(np.mean(two["mR"] > one["mR"])), 3)}


ACCURACY_KS = (1, 5)


def bootstrap_accuracy(rank_sets: list[np.ndarray], labels, draws: int = 1000, seed: int = 0,
                       ks: tuple[int, ...] = ACCURACY_KS, chunk: int = 256) -> list[dict[str, np.ndarray]]:
    """Top-k accuracy and mean per-class top-1 (percent) of ``draws`` resamples of a classification split's images.

    ``rank_sets`` holds, per model, each image's 0-based rank of its true class (zero-shot classification); every
    model is scored on the same resamples, so differences between models are paired (``bootstrap_paired``). A class
    that a resample happens to leave out is skipped in that draw's per-class mean, as an empty class is in the
    point estimate.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    labels = np.asarray(labels, dtype=np.int64)
    ranks = [np.asarray(r, dtype=np.int64) for r in rank_sets]
    if any(r.shape != labels.shape for r in ranks) or not labels.size:
        raise ValueError("bootstrap_accuracy: every rank set needs one rank per label, and at least one image")
    num_images = labels.size
    one_hot = (labels[:, None] == np.unique(labels)[None, :]).astype(np.float64)  # (images, classes)
    rng = np.random.default_rng(seed)
    columns = [{**{f"top{k}": [] for k in ks}, "mean_class_top1": []} for _ in ranks]
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        counts = rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=size).astype(np.float64)
        per_class = counts @ one_hot  # (size, classes): images of each class drawn
        for model_ranks, out in zip(ranks, columns):
            for k in ks:
                out[f"top{k}"].append(counts @ (model_ranks < k) / num_images * 100)
            right = counts @ (one_hot * (model_ranks == 0)[:, None])
            share = np.divide(right, per_class, out=np.zeros_like(right), where=per_class > 0) * 100
            out["mean_class_top1"].append(share.sum(axis=1) / (per_class > 0).sum(axis=1))
    return [{key: np.concatenate(parts) for key, parts in out.items()} for out in columns]


def accuracy_intervals(true_class_ranks, labels, draws: int = 1000, level: float = 95.0, seed: int = 0,
                       ks: tuple[int, ...] = ACCURACY_KS) -> dict:
    """Percentile bootstrap intervals of top-k accuracy and mean per-class top-1 (``bootstrap_accuracy``)."""
    _check_level(level)
    samples = bootstrap_accuracy([true_class_ranks], labels, draws, seed, ks)[0]
    return {"level": level, "draws": draws, "seed": seed, "resampled": "images of the split",
            "bounds": {key: _percentile_bounds(values, level) for key, values in samples.items()}}


def paired_accuracy_difference(first, second, labels, draws: int = 1000, level: float = 95.0, seed: int = 0) -> dict:
    """Top-1 accuracy of ``second`` minus ``first`` on one split, with its paired bootstrap interval."""
    _check_level(level)
    one, two = bootstrap_accuracy([first, second], labels, draws, seed, ks=(1,))
    point = float((np.asarray(second) == 0).mean() - (np.asarray(first) == 0).mean()) * 100
    return {"top1": round(point, 2), "bounds": _percentile_bounds(two["top1"] - one["top1"], level), "level": level,
            "draws": draws, "share_above_zero": round(float(np.mean(two["top1"] > one["top1"])), 3)}
