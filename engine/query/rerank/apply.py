"""Apply ``--rerank aas|par-bonus`` to a first-stage candidate list (scores in :mod:`engine.query.rerank.scores`).

References: an image query is its own reference. A text query has no image to compare with, so the first-stage
top-m images stand in for it (pseudo-relevance feedback) and a candidate's term is its mean over the m
references. Final scores (see docs/query.md):
    AAS, image query: s = AAS(query, c)
    AAS, text query:  s = (1 - w) · s1 + w · mean_r AAS(r, c)          (w = --aas-weight, default 0.5)
    par-bonus:        s = s1 + mean_r β · TOAI(r, c) · [CCS > a and ASCS > b]
Candidates whose image cannot be read keep their first-stage score (a note says how many).
"""

from __future__ import annotations

import numpy as np

from engine.errors import DataError
from engine.query.request import QueryRequest
from engine.query.rerank.features import FEATURE_BATCH, AttentionFeatures, extract_features
from engine.query.rerank.scores import aas_scores, par_terms
from engine.query.search import Neighbours


def fill_cache(engine, cache, ids: list[int], notes: list[str]) -> set[int]:
    """Encode the attention features of ``ids`` missing from the cache; returns the ids that could not be read."""
    import torch

    from engine.data.images import load_rgb

    missing = cache.missing(ids)
    if not missing:
        return set()
    rows = engine.store.rows_for(missing)
    unreadable: set[int] = set()
    for start in range(0, len(missing), FEATURE_BATCH):
        batch_ids, pixels = [], []
        for image_id in missing[start:start + FEATURE_BATCH]:
            try:
                pixels.append(engine.transform(load_rgb(rows[image_id].path)))
                batch_ids.append(image_id)
            except (DataError, KeyError):
                unreadable.add(image_id)
        if batch_ids:
            features = engine.run_model(extract_features, engine.model, torch.stack(pixels), cache.layer)
            cache.add(batch_ids, features)
    if unreadable:
        notes.append(f"{len(unreadable)} candidate image(s) could not be read for reranking; "
                     "they keep their first-stage score")
    return unreadable


def rerank(engine, request: QueryRequest, first: Neighbours, query_vector: np.ndarray, pixels,
           notes: list[str]) -> np.ndarray:
    """New scores aligned with ``first.ids`` (float64)."""
    options = request.options
    cache = engine.attention_cache(options.layer)
    ids = [int(value) for value in first.ids]
    unreadable = fill_cache(engine, cache, ids, notes)
    usable = [position for position, image_id in enumerate(ids) if image_id not in unreadable]
    scores = first.scores.astype(np.float64).copy()
    if not usable:
        return scores
    usable_ids = [ids[position] for position in usable]
    candidates = cache.features(usable_ids)
    if request.is_image:
        references = engine.run_model(extract_features, engine.model, pixels, options.layer)
        reference_globals = query_vector[None, :]
    else:
        count = min(options.prf_references, len(usable_ids))
        references = cache.features(usable_ids[:count])  # first-stage order: the top-m readable images
        reference_globals = _embeddings(engine, usable_ids[:count])
    first_stage = scores[usable]
    if request.rerank == "aas":
        aas = _mean_over_references(references, lambda ref: aas_scores(ref, candidates))
        weight = 1.0 if request.is_image else options.aas_text_weight
        scores[usable] = (1.0 - weight) * first_stage + weight * aas
    else:
        candidate_globals = _embeddings(engine, usable_ids)
        bonus = np.zeros(len(usable_ids))
        gated = np.zeros(len(usable_ids), bool)
        for row in range(len(references)):
            terms = par_terms(reference_globals[row], references.take([row]), candidate_globals, candidates,
                              options.par_ccs, options.par_ascs, options.par_top_fraction, options.par_beta)
            bonus += terms.bonus / len(references)
            gated |= terms.gated
        scores[usable] = first_stage + bonus
        notes.append(f"par-bonus: {int(gated.sum())} of {len(usable_ids)} candidates passed the CCS/ASCS gates")
    return scores


def _mean_over_references(references: AttentionFeatures, score) -> np.ndarray:
    return np.mean([score(references.take([row])) for row in range(len(references))], axis=0)


def _embeddings(engine, ids: list[int]) -> np.ndarray:
    """Stored image embeddings in the order of ``ids``."""
    found, matrix = engine.store.embeddings_for(np.asarray(ids, np.int64))
    row_of = {int(image_id): row for row, image_id in enumerate(found)}
    return matrix[[row_of[image_id] for image_id in ids]]
