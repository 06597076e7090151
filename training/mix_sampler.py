"""Per-dataset sampling weights: which training pairs of a mix an epoch visits, in which order.

An epoch draws ``epoch_size`` pairs. Source d gets ``share_d = weight_d / sum(weights)`` of them (largest
remainders, so the counts add up exactly), and takes them from an endless stream of its own seeded
permutations: epoch e continues where epoch e-1 stopped, so a source is visited without repetition until all its
pairs were seen, whatever its size compared to the epoch. The drawn indices are then shuffled together.

Everything is a function of (seed, epoch): a resumed run draws the same epochs. Under DDP the epoch's list is
cut to a multiple of the number of processes and rank r takes every r-th index, as ``DistributedSampler`` does,
so the union of the ranks' batches of a step is the single-process batch of that step.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


def allocate(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder method; ties go to the earlier source)."""
    if total < 0 or not weights or any(weight <= 0 for weight in weights):
        raise ValueError("allocate needs total >= 0 and positive weights")
    exact = [total * weight / sum(weights) for weight in weights]
    counts = [math.floor(value) for value in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


def default_epoch_size(sizes: list[int], weights: list[float], primary: int) -> int:
    """One pass over the primary source's pairs: ``sizes[primary] / share_primary`` pairs in all."""
    return max(1, round(sizes[primary] * sum(weights) / weights[primary]))


class MixSampler(Sampler[int]):
    """Indices into the concatenation of the sources (source d's pairs at ``offsets[d] ...``)."""

    def __init__(self, sizes: list[int], weights: list[float], epoch_size: int, seed: int, num_replicas: int = 1,
                 rank: int = 0) -> None:
        if len(sizes) != len(weights) or not sizes or any(size < 1 for size in sizes):
            raise ValueError("MixSampler needs one positive size per weight")
        if epoch_size < num_replicas:
            raise ValueError(f"epoch of {epoch_size} pairs is smaller than the {num_replicas} processes")
        self.sizes = list(sizes)
        self.weights = list(weights)
        self.epoch_size = epoch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.counts = allocate(epoch_size, self.weights)
        self.offsets = [sum(self.sizes[:d]) for d in range(len(self.sizes))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _stream(self, source: int, start: int, count: int) -> torch.Tensor:
        """Positions ``start .. start + count`` of the source's endless sequence of seeded permutations."""
        size = self.sizes[source]
        pieces, position = [], start
        while position < start + count:
            cycle, within = divmod(position, size)
            generator = torch.Generator().manual_seed(hash((self.seed, source, cycle)) % 2**63)
            permutation = torch.randperm(size, generator=generator)
            take = min(size - within, start + count - position)
            pieces.append(permutation[within:within + take])
            position += take
        return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)

    def epoch_indices(self) -> list[int]:
        """The whole epoch's indices (every rank's), in the order the ranks share out."""
        drawn = [self._stream(d, self.epoch * count, count) + self.offsets[d] for d, count in enumerate(self.counts)]
        everything = torch.cat(drawn)
        # (ints only: the hash of a str changes from one process to the next)
        generator = torch.Generator().manual_seed(hash((self.seed, -1, self.epoch)) % 2**63)
        everything = everything[torch.randperm(len(everything), generator=generator)]
        usable = len(everything) - len(everything) % self.num_replicas
        return everything[:usable].tolist()

    def __iter__(self):
        return iter(self.epoch_indices()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.epoch_size // self.num_replicas
