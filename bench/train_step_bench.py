"""Seconds per cached training step, with the text padding past a batch's longest caption cut or kept.

A feature cache pads every caption to its dataset's longest, and a mixed batch to the longest dataset's;
``training.model_ops.without_trailing_padding`` cuts a batch's text inputs after its own longest caption before
the text tail and heads run. This script times the same batches (the mix's first ``--steps`` training batches)
both ways, alternating the two modes ``--rounds`` times in one process, so the ratio is measured under one load:

    python -m bench.train_step_bench --mix bench/mixes/rsicd_ucm_aid.yaml --cache runs/cache-mix

It needs the mix's caches (``bench.mix_ablation`` builds them). Weights are freshly initialised (the instruction
classifier untrained): step cost does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mix", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from bench.machine import command_line, machine_text
    from bench.mix_ablation import _BASE
    from training import model_ops
    from training.data_setup import prepare_data
    from training.distributed import DistInfo
    from training.losses import PIRLoss
    from training.mix import load_mix, read_mix_file
    from training.optim import build_optimizer
    from training.train import TrainStep
    from training.train_config import TrainConfig

    spec = read_mix_file(args.mix)
    config = TrainConfig(feature_cache=str(args.cache), mix=spec.to_dict(), **_BASE)
    model = model_ops.build_model(config)
    data = prepare_data(load_mix(spec, config.use_affiliation), config, model, torch.device("cpu"), DistInfo())
    data.set_epoch(0)
    batches = []
    for batch in data.train_loader:
        batches.append(batch)
        if len(batches) == args.steps:
            break
    lengths = [int(batch["text_inputs"]["mask"].shape[1]) for batch in batches]
    used = [int(model_ops.without_trailing_padding(batch["text_inputs"])["mask"].shape[1]) for batch in batches]
    criterion = PIRLoss(config.use_affiliation, config.affiliation_weight)
    step = TrainStep(model, criterion, cached=True, tail=config.unfreeze_last)
    optimizer = build_optimizer(step, config, backbones=[model.vision, model.text])
    cut = model_ops.without_trailing_padding
    modes = {"cut": cut, "kept": lambda inputs: inputs}
    seconds: dict[str, list[float]] = {name: [] for name in modes}

    def run_steps() -> float:
        started = time.perf_counter()
        for batch in batches:
            parts = step(batch)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
        return (time.perf_counter() - started) / len(batches)

    step.train()
    model_ops.keep_frozen_in_eval(model, config)
    run_steps()  # warm-up
    try:
        for _ in range(args.rounds):
            for name, function in modes.items():
                model_ops.without_trailing_padding = function
                seconds[name].append(run_steps())
    finally:
        model_ops.without_trailing_padding = cut
    print(f"{time.strftime('%Y-%m-%d %H:%M')} on {machine_text()}; {torch.get_num_threads()} torch threads")
    print(f"command: {command_line()}")
    print(f"{len(batches)} batches of {config.batch_size} pairs: cached text length {min(lengths)}-{max(lengths)}, "
          f"used {min(used)}-{max(used)} (mean {statistics.mean(used):.1f})")
    for name in modes:
        print(f"padding {name}: median {statistics.median(seconds[name]):.3f} s/step over {args.rounds} rounds "
              f"({', '.join(f'{s:.3f}' for s in seconds[name])})")
    print(f"kept / cut: {statistics.median(seconds['kept']) / statistics.median(seconds['cut']):.2f}x")


if __name__ == "__main__":
    main()
