"""encode_distinct: identical strings get bit-identical rows, whatever batch they would have fallen in."""

from __future__ import annotations

import numpy as np

from engine.text_encoding import encode_distinct


def test_each_distinct_string_is_encoded_once_and_copies_share_its_row() -> None:
    batches: list[list[str]] = []

    def encode(batch: list[str]) -> np.ndarray:
        batches.append(list(batch))
        # a batch-dependent encoder: the row depends on the batch's length, as float rounding does
        return np.array([[len(text), len(batch) * 1e-7] for text in batch], dtype=np.float32)

    texts = ["a harbor", "many trees", "a harbor", "a road", "many trees", "a harbor"]
    rows = encode_distinct(encode, texts, batch_size=2)
    assert batches == [["a harbor", "many trees"], ["a road"]]
    assert rows.shape == (6, 2)
    for text in set(texts):
        same = [row for row, other in zip(rows, texts) if other == text]
        assert all(np.array_equal(same[0], row) for row in same)
    assert rows[3, 0] == len("a road")
