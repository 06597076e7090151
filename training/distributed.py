"""Process-group helpers: everything degrades to single-process behaviour when torch.distributed is idle.

Why a custom gather: the contrastive losses need the *global* batch on every rank, and the gradient of every
rank's copy of the global loss must flow back to the rank that produced each embedding. Our autograd-aware
gather sums the incoming gradients over ranks in backward; combined with DDP's gradient averaging this makes
the parameter gradients equal to those of one process that saw the whole global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> DistInfo:
    if not is_distributed():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_environment(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/MASTER_ADDR env vars); no-op otherwise."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGradient(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gradient over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device))
        lengths = [int(size.item()) for size in sizes]
        longest = max(lengths)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        pieces = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(pieces, padded.contiguous())
        ctx.lengths = lengths
        ctx.rank = dist.get_rank()
        return torch.cat([piece[:length] for piece, length in zip(pieces, lengths)], dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.lengths[: ctx.rank])
        return grad[start : start + ctx.lengths[ctx.rank]]


def gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """The global batch (rank order) of ``tensor``; identity when not distributed."""
    if not is_distributed():
        return tensor
    return _GatherWithGradient.apply(tensor)


def gather_labels(tensor: torch.Tensor) -> torch.Tensor:
    """Gather integer ids (no gradient) in rank order; identity when not distributed."""
    if not is_distributed():
        return tensor
    with torch.no_grad():
        return _GatherWithGradient.apply(tensor)


def any_rank(value: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when any rank says True (used to stop all ranks together, e.g. on a NaN loss)."""
    if not is_distributed():
        return value
    flag = torch.tensor([1.0 if value else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
