"""Recall@K against a naive per-query reference on seeded random data and on hand-made tie cases."""

from __future__ import annotations

import numpy as np
import pytest

from engine.metrics import retrieval_ranks, retrieval_recalls


def _naive_ranks(images: np.ndarray, texts: np.ndarray, owner: np.ndarray, ties: str) -> tuple[list[int], list[int]]:
    """One query at a time, sorting the full score list with Python's stable sort.

    index: equal scores keep list order; pessimistic: matches go after every non-match with an equal score.
    """

    def key(scores, is_match):
        if ties == "index":
            return lambda item: -scores[item]
        return lambda item: (-scores[item], is_match(item))

    image_ranks = []
    for i in range(len(images)):
        own = {j for j in range(len(texts)) if owner[j] == i}
        if not own:
            image_ranks.append(-1)
            continue
        scores = [float(images[i] @ texts[j]) for j in range(len(texts))]
        order = sorted(range(len(texts)), key=key(scores, lambda j: j in own))
        first = min(order.index(j) for j in own)  # the image's best-ranked caption
        image_ranks.append(sum(1 for j in order[:first] if j not in own))
    text_ranks = []
    for j in range(len(texts)):
        scores = [float(texts[j] @ images[i]) for i in range(len(images))]
        order = sorted(range(len(images)), key=key(scores, lambda i: i == owner[j]))
        text_ranks.append(order.index(owner[j]))
    return image_ranks, text_ranks


@pytest.mark.parametrize("ties", ["index", "pessimistic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference_on_random_embeddings(seed: int, ties: str) -> None:
    rng = np.random.default_rng(seed)
    num_images, dim = 37, 16
    owner = np.concatenate([np.repeat(np.arange(num_images - 3), 5), [num_images - 3]])  # last 2 images: no text
    images = rng.normal(size=(num_images, dim)).astype(np.float32)
    texts = rng.normal(size=(len(owner), dim)).astype(np.float32)
    # duplicate captions across images and duplicate images, as in UCM/RSICD, so that ties really occur
    texts[5:10] = texts[0:5]
    texts[40] = texts[3]
    images[20] = images[21]
    ranks = retrieval_ranks(images, texts, owner, chunk_size=7, ties=ties)
    expected_i2t, expected_t2i = _naive_ranks(images, texts, owner, ties)
    assert ranks.image_to_text.tolist() == expected_i2t
    assert ranks.text_to_image.tolist() == expected_t2i


def test_without_ties_equals_argsort_protocol() -> None:
    """With continuous scores the result equals the argsort-based protocol of the PIR reference code."""
    rng = np.random.default_rng(7)
    images = rng.normal(size=(20, 8)).astype(np.float32)
    owner = np.repeat(np.arange(20), 5)
    texts = images[owner] + rng.normal(scale=1.5, size=(100, 8)).astype(np.float32)
    scores = images @ texts.T
    i2t = [min(np.where(np.argsort(-scores[i]) == j)[0][0] for j in range(5 * i, 5 * i + 5)) for i in range(20)]
    t2i = [np.where(np.argsort(-scores[:, j]) == j // 5)[0][0] for j in range(100)]
    ks = (1, 5, 10)
    expected = {f"i2t_r{k}": 100 * np.mean(np.array(i2t) < k) for k in ks}
    expected |= {f"t2i_r{k}": 100 * np.mean(np.array(t2i) < k) for k in ks}
    result = retrieval_recalls(images, texts, owner)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)
    assert result["mR"] == pytest.approx(np.mean(list(expected.values())))


def test_duplicate_caption_of_another_image_under_both_tie_rules() -> None:
    images = np.eye(3, dtype=np.float32)
    # caption 0 belongs to image 0; caption 1 (image 1) is the identical string/embedding
    texts = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    owner = np.array([0, 1, 2])
    pessimistic = retrieval_ranks(images, texts, owner, ties="pessimistic")
    assert pessimistic.image_to_text.tolist() == [1, 2, 0]  # image 0: caption 1 ties with its own caption
    assert pessimistic.text_to_image.tolist() == [0, 2, 0]  # caption 1 scores 0 on its own image: all tie or beat it
    by_index = retrieval_ranks(images, texts, owner, ties="index")
    assert by_index.image_to_text.tolist() == [0, 1, 0]  # image 0's caption is listed first; image 1: caption 0 wins
    assert by_index.text_to_image.tolist() == [0, 1, 0]  # caption 1: image 0 beats it, image 2 ties but comes later


def test_one_vs_five_captions_and_perfect_retrieval() -> None:
    images = np.eye(4, dtype=np.float32)
    owner = np.array([0, 1, 1, 1, 1, 1, 2, 3])  # image 0 has one caption, image 1 five
    texts = images[owner]
    result = retrieval_recalls(images, texts, owner)
    assert all(value == 100.0 for value in result.values())


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="dims differ"):
        retrieval_ranks(np.zeros((2, 3)), np.zeros((2, 4)), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_ranks(np.zeros((2, 3)), np.zeros((2, 3)), [0, 2])
    with pytest.raises(ValueError, match="ties must be"):
        retrieval_ranks(np.zeros((2, 3)), np.zeros((2, 3)), [0, 1], ties="random")


def _naive_resample(ranks, owner: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Rebuild the resampled split image by image (repeats included) and score it with recalls_from_ranks."""
    from engine.metrics import RetrievalRanks, recalls_from_ranks

    drawn = np.repeat(np.arange(len(counts)), counts)
    i2t = ranks.image_to_text[drawn]
    t2i = np.concatenate([ranks.text_to_image[owner == image] for image in drawn])
    return recalls_from_ranks(RetrievalRanks(image_to_text=i2t, text_to_image=t2i))


def test_bootstrap_equals_naive_resampling_of_images_with_their_captions() -> None:
    from engine.metrics import bootstrap_recalls

    rng = np.random.default_rng(3)
    num_images = 23
    owner = np.concatenate([np.repeat(np.arange(num_images - 2), 5), [0, 4, 4]])  # uneven captions; 2 without
    images = rng.normal(size=(num_images, 8)).astype(np.float32)
    texts = images[owner] + rng.normal(scale=1.2, size=(len(owner), 8)).astype(np.float32)
    ranks = retrieval_ranks(images, texts, owner)
    samples = bootstrap_recalls(ranks, owner, draws=40, seed=11)
    draws = np.random.default_rng(11).multinomial(num_images, np.full(num_images, 1 / num_images), size=40)
    for row, counts in enumerate(draws):
        expected = _naive_resample(ranks, owner, counts)
        for key, value in expected.items():
            assert samples[key][row] == pytest.approx(value), (row, key)


def test_intervals_hold_the_point_estimate_and_narrow_with_more_images() -> None:
    from engine.metrics import recall_intervals, recalls_from_ranks

    def split(num_images: int, seed: int):
        rng = np.random.default_rng(seed)
        owner = np.repeat(np.arange(num_images), 5)
        images = rng.normal(size=(num_images, 16)).astype(np.float32)
        texts = images[owner] + rng.normal(scale=2.0, size=(len(owner), 16)).astype(np.float32)
        return retrieval_ranks(images, texts, owner), owner

    widths = []
    for num_images in (60, 600):
        ranks, owner = split(num_images, 5)
        point = recalls_from_ranks(ranks)
        interval = recall_intervals(ranks, owner, draws=300)
        for key, (low, high) in interval["bounds"].items():
            assert low <= round(point[key], 2) <= high, key
        widths.append(interval["bounds"]["mR"][1] - interval["bounds"]["mR"][0])
    assert widths[1] < widths[0] / 2  # ten times the images: about a third of the width
    assert recall_intervals(*split(60, 5), draws=50) == recall_intervals(*split(60, 5), draws=50)  # seeded


def test_bootstrap_refuses_bad_arguments() -> None:
    from engine.metrics import recall_intervals

    images = np.eye(3, dtype=np.float32)
    owner = np.array([0, 1, 2])
    ranks = retrieval_ranks(images, images, owner)
    with pytest.raises(ValueError, match="draws"):
        recall_intervals(ranks, owner, draws=0)
    with pytest.raises(ValueError, match="level"):
        recall_intervals(ranks, owner, level=100)
    with pytest.raises(ValueError, match="one entry per text"):
        recall_intervals(ranks, owner[:2])


def test_paired_difference_is_zero_for_one_model_and_sharper_than_separate_intervals() -> None:
    from engine.metrics import RetrievalRanks, paired_difference, recall_intervals

    rng = np.random.default_rng(8)
    num_images = 300
    owner = np.repeat(np.arange(num_images), 5)
    images = rng.normal(size=(num_images, 16)).astype(np.float32)
    texts = images[owner] + rng.normal(scale=2.0, size=(len(owner), 16)).astype(np.float32)
    first = retrieval_ranks(images, texts, owner)
    same = paired_difference(first, first, owner, draws=200)
    assert same["mR"] == 0 and same["bounds"] == [0.0, 0.0]
    # a second model that finds one more caption at rank 0 for a fifth of the images: a small, consistent gain
    better_texts = first.text_to_image.copy()
    better_texts[::25] = 0
    second = RetrievalRanks(image_to_text=first.image_to_text, text_to_image=better_texts)
    diff = paired_difference(first, second, owner, draws=500)
    low, high = diff["bounds"]
    assert 0 < low <= diff["mR"] <= high and diff["share_above_zero"] == 1.0
    separate = recall_intervals(first, owner, draws=500)["bounds"]["mR"]
    assert high - low < (separate[1] - separate[0]) / 3  # pairing cancels the images both models find hard
    with pytest.raises(ValueError, match="different numbers of images"):
        paired_difference(first, RetrievalRanks(first.image_to_text[:-1], first.text_to_image), owner)


def _naive_accuracy(true_ranks: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Rebuild the resampled classification split image by image and score it as zero_shot_metrics does."""
    drawn = np.repeat(np.arange(len(counts)), counts)
    ranks, classes = true_ranks[drawn], labels[drawn]
    per_class = [float((ranks[classes == c] == 0).mean() * 100) for c in np.unique(classes)]
    return {"top1": float((ranks < 1).mean() * 100), "top5": float((ranks < 5).mean() * 100),
            "mean_class_top1": float(np.mean(per_class))}


def test_accuracy_bootstrap_equals_naive_resampling_of_images() -> None:
    from engine.metrics import bootstrap_accuracy

    rng = np.random.default_rng(4)
    labels = np.concatenate([np.repeat(np.arange(6), 7), [6, 6]])  # a class of 2 images is often left out
    true_ranks = rng.integers(0, 7, size=labels.size)
    true_ranks[::3] = 0
    samples = bootstrap_accuracy([true_ranks], labels, draws=60, seed=9)[0]
    draws = np.random.default_rng(9).multinomial(labels.size, np.full(labels.size, 1 / labels.size), size=60)
    assert any(counts[-2:].sum() == 0 for counts in draws)  # the skipped-class case is exercised
    for row, counts in enumerate(draws):
        for key, value in _naive_accuracy(true_ranks, labels, counts).items():
            assert samples[key][row] == pytest.approx(value), (row, key)


def test_accuracy_intervals_and_paired_top1_difference() -> None:
    from engine.metrics import accuracy_intervals, bootstrap_accuracy, paired_accuracy_difference

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, size=800)
    first = np.where(rng.random(800) < 0.6, 0, rng.integers(1, 10, size=800))
    interval = accuracy_intervals(first, labels, draws=300)
    point = float((first == 0).mean() * 100)
    low, high = interval["bounds"]["top1"]
    assert low <= round(point, 2) <= high and set(interval["bounds"]) == {"top1", "top5", "mean_class_top1"}
    assert accuracy_intervals(first, labels, draws=50) == accuracy_intervals(first, labels, draws=50)  # seeded
    same = paired_accuracy_difference(first, first, labels, draws=100)
    assert same["top1"] == 0 and same["bounds"] == [0.0, 0.0]
    second = first.copy()
    second[np.flatnonzero(first > 0)[::10]] = 0  # one wrong image in ten made right: a small, consistent gain
    diff = paired_accuracy_difference(first, second, labels, draws=500)
    assert 0 < diff["bounds"][0] <= diff["top1"] <= diff["bounds"][1] and diff["share_above_zero"] == 1.0
    assert diff["bounds"][1] - diff["bounds"][0] < (high - low) / 2  # pairing cancels what both get wrong
    with pytest.raises(ValueError, match="one rank per label"):
        bootstrap_accuracy([first[:-1]], labels)
    with pytest.raises(ValueError, match="draws"):
        accuracy_intervals(first, labels, draws=0)
    with pytest.raises(ValueError, match="level"):
        paired_accuracy_difference(first, second, labels, level=0)
