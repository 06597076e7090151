"""Two gloo processes (DDP) give the single-process loss and gradients on the same global batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import training  # noqa: F401
from training.losses import PIRLoss

GLOBAL_BATCH, DIM, WORLD = 8, 6, 2


def _problem():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, DIM, generator=generator)
    texts = torch.randn(GLOBAL_BATCH, DIM, generator=generator)
    image_ids = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])  # duplicates straddle the rank boundary
    class_ids = torch.tensor([0, 0, 1, 0, 2, 2, 1, 2])
    return images, texts, image_ids, class_ids


class _Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.image = nn.Linear(DIM, DIM)
        self.text = nn.Linear(DIM, DIM)
        self.criterion = PIRLoss(use_affiliation=True)

    def forward(self, images, texts, image_ids, class_ids):
        normalise = nn.functional.normalize
        return self.criterion(normalise(self.image(images), dim=-1), normalise(self.text(texts), dim=-1),
                              image_ids, class_ids).total


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_Heads())
        images, texts, image_ids, class_ids = _problem()
        mine = slice(rank, GLOBAL_BATCH, WORLD)  # DistributedSampler's interleaving
        loss = model(images[mine], texts[mine], image_ids[mine], class_ids[mine])
        loss.backward()
        results[rank] = (loss.item(), {n: p.grad.clone() for n, p in model.module.named_parameters()})
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_gloo_matches_single_process():
    single = _Heads()
    loss = single(*_problem())
    loss.backward()
    expected = {n: p.grad for n, p in single.named_parameters()}
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        rank_loss, grads = results[rank]
        assert abs(rank_loss - loss.item()) < 1e-5
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
