"""bench.mix_ablation's variants: a continuation starts from a trained model, the others from the AID tail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.mix_ablation import CONTINUATIONS, VARIANTS, variant_config
from training.train_config import TrainConfig

BASE = TrainConfig(epochs=6, learning_rate=5e-4)
INSTRUCTION = {"default": Path("runs/instruction-aid-tail1/instruction.safetensors"), "r-lite2": None}


def test_continuation_starts_from_the_trained_model_without_instruction_weights() -> None:
    config = variant_config(BASE, "r-12ep+8", 2, INSTRUCTION, init_from="runs/start-r12ep")
    assert (config.init_from, config.instruction_weights, config.seed) == ("runs/start-r12ep", None, 2)
    assert (config.epochs, config.learning_rate) == (8, 2.5e-4)
    with pytest.raises(SystemExit, match="--init-from"):
        variant_config(BASE, "r-12ep+8", 1, INSTRUCTION)


def test_hard_negative_continuation_differs_from_the_continuation_only_in_hard_negatives() -> None:
    plain = variant_config(BASE, "r-12ep+8", 3, INSTRUCTION, init_from="runs/start-r12ep")
    hard = variant_config(BASE, "r-12ep+8-hn5", 3, INSTRUCTION, init_from="runs/start-r12ep")
    assert (plain.hard_negative_beta, hard.hard_negative_beta) == (0.0, 5.0)
    assert hard == dataclasses.replace(plain, hard_negative_beta=5.0)


def test_repeated_caption_continuation_differs_from_the_continuation_only_in_repeated_captions() -> None:
    plain = variant_config(BASE, "r-12ep+8", 2, INSTRUCTION, init_from="runs/start-r12ep")
    once = variant_config(BASE, "r-12ep+8-once", 2, INSTRUCTION, init_from="runs/start-r12ep")
    assert (plain.repeated_captions, once.repeated_captions) == ("keep", "once")
    assert once == dataclasses.replace(plain, repeated_captions="once")


def test_other_variants_need_their_instruction_weights_and_ignore_init_from() -> None:
    for name in set(VARIANTS) - CONTINUATIONS - {"r-lite2"}:
        config = variant_config(BASE, name, 1, INSTRUCTION, init_from="runs/start-r12ep")
        assert config.init_from is None and config.instruction_weights == str(INSTRUCTION["default"])
    with pytest.raises(SystemExit, match="--lite2-instruction"):
        variant_config(BASE, "r-lite2", 1, INSTRUCTION)
