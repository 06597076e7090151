"""Per-dataset sampling weights (training.mix_sampler): shares, determinism, coverage, DDP sharding."""

from __future__ import annotations

from collections import Counter

import pytest

from training.mix_sampler import MixSampler, allocate, default_epoch_size


def _source_of(index: int, sizes: list[int]) -> int:
    for source, size in enumerate(sizes):
        if index < size:
            return source
        index -= size
    raise AssertionError("index beyond the sources")


def test_allocate_is_exact_and_proportional():
    assert allocate(10, [1, 1]) == [5, 5]
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]  # remainder to the earlier source on ties
    assert allocate(100, [3, 1]) == [75, 25]
    for total in range(0, 50):
        counts = allocate(total, [0.2, 0.5, 1.3])
        assert sum(counts) == total
        assert all(abs(c - total * w / 2.0) < 1 for c, w in zip(counts, [0.2, 0.5, 1.3]))
    with pytest.raises(ValueError):
        allocate(10, [1, 0])


@pytest.mark.parametrize("weights", [[1.0, 1.0], [1.0, 0.25], [2.0, 1.0, 0.5]])
def test_each_epoch_draws_each_source_by_its_weight(weights):
    sizes = [40, 300, 7][:len(weights)]
    sampler = MixSampler(sizes, weights, epoch_size=120, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 120
        per_source = Counter(_source_of(i, sizes) for i in drawn)
        assert [per_source[d] for d in range(len(sizes))] == allocate(120, weights)


def test_a_source_repeats_only_after_all_its_pairs_were_seen():
    sizes = [50, 1000]
    sampler = MixSampler(sizes, [1.0, 1.0], epoch_size=60, seed=0)  # 30 of the 50 per epoch
    small, large = Counter(), Counter()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for index in sampler:
            (small if index < 50 else large)[index] += 1
        if epoch == 1:  # 60 draws from 50 pairs: every pair once, 10 of them twice
            assert len(small) == 50 and max(small.values()) == 2
    assert set(small.values()) == {3}  # 150 draws = exactly three passes over the 50
    assert len(large) == 150 and set(large.values()) == {1}  # the large source never repeats in 5 epochs


def test_the_draw_is_a_function_of_seed_and_epoch():
    first, second = MixSampler([30, 80], [1, 2], 60, seed=7), MixSampler([30, 80], [1, 2], 60, seed=7)
    second.set_epoch(2)
    second.set_epoch(1)  # order of set_epoch calls does not matter (resume)
    first.set_epoch(1)
    assert list(first) == list(second)
    first.set_epoch(2)
    assert list(first) != list(second)
    assert list(MixSampler([30, 80], [1, 2], 60, seed=8)) != list(MixSampler([30, 80], [1, 2], 60, seed=7))


def test_ddp_ranks_share_out_the_single_process_epoch():
    single = MixSampler([30, 80], [1, 1], 63, seed=1)
    ranks = [MixSampler([30, 80], [1, 1], 63, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in [single, *ranks]:
        sampler.set_epoch(4)
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ranks[0]) == 31
    interleaved = [i for pair in zip(*parts) for i in pair]
    assert interleaved == list(single)[:62]


def test_default_epoch_is_one_pass_over_the_primary():
    assert default_epoch_size([8400, 40000], [1.0, 1.0], primary=0) == 16800
    assert default_epoch_size([8400, 40000], [1.0, 0.5], primary=0) == 12600
    assert default_epoch_size([8400], [1.0], primary=0) == 8400
