"""PAR training (encoders/par.py) against a naive re-implementation of the paper's steps, and inside VIR."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import encoders
from encoders.model_config import load_config
from encoders.par import NO_REFERENCE, ParSettings, pair_references, reinforce


def _naive_references(classes: list[int], images: list[int]) -> list[int]:
    out = []
    for i in range(len(classes)):
        found = NO_REFERENCE
        if classes[i] >= 0:
            for step in range(1, len(classes)):
                j = (i + step) % len(classes)
                if classes[j] == classes[i] and images[j] != images[i]:
                    found = j
                    break
        out.append(found)
    return out


def test_references_are_the_next_same_class_sample_of_another_image() -> None:
    classes = [0, 1, 0, 0, 2, 1, -1, 2]
    images = [10, 11, 10, 12, 13, 14, 15, 13]  # rows 0 and 2 are one image; 4 and 7 too
    got = pair_references(torch.tensor(classes), torch.tensor(images)).tolist()
    assert got == _naive_references(classes, images) == [3, 5, 3, 0, NO_REFERENCE, 1, NO_REFERENCE, NO_REFERENCE]


def _naive_reinforce(attention, indices, tokens, references, positions, settings):
    """The paper's steps one sample at a time, in plain Python over the position frame."""
    batch, heads, kept, _ = attention.shape
    frames, held = [], []
    for b in range(batch):
        frame = [[0.0] * positions for _ in range(positions)]
        for q in range(kept):
            for k in range(kept):
                frame[int(indices[b, q])][int(indices[b, k])] = float(attention[b, :, q, k].mean())
        frames.append(frame)
        held.append({int(p) for p in indices[b]})

    def top(frame):
        received = [sum(frame[row][col] for row in range(positions)) for col in range(positions)]
        count = math.ceil(settings.top_fraction * positions)
        return set(sorted(range(positions), key=lambda col: (-received[col], col))[:count])

    def cosine(u, v):
        nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
        return sum(x * y for x, y in zip(u, v)) / (nu * nv) if nu > 1e-12 and nv > 1e-12 else 0.0

    out = attention.clone()
    gated_count = 0
    for b in range(batch):
        r = int(references[b])
        if r < 0:
            continue
        ccs = cosine(tokens[b].tolist(), tokens[r].tolist())
        union = held[b] | held[r]
        ascs = sum(cosine(frames[b][p], frames[r][p]) for p in union) / len(union)
        if not (ccs > settings.ccs_min and ascs > settings.ascs_min):
            continue
        gated_count += 1
        toai = top(frames[b]) & top(frames[r])
        for h in range(heads):
            for q in range(kept):
                row = [float(attention[b, h, q, k]) * (1 + settings.strength * (int(indices[b, k]) in toai))
                       for k in range(kept)]
                total = sum(row)
                out[b, h, q] = torch.tensor([value / total for value in row], dtype=attention.dtype)
    return out, gated_count


def test_reinforcement_matches_the_naive_steps_and_its_gates_cut_both_ways() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, heads, kept, positions = 8, 2, 5, 9
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # images of a class attend alike over the same kept positions, except class 2 (other positions: low ASCS)
    logits = torch.randn(4, heads, kept, kept, generator=generator, dtype=torch.float64).mul(2)
    noise = torch.randn(batch, heads, kept, kept, generator=generator, dtype=torch.float64).mul(0.6)
    attention = (logits[classes] + noise).softmax(-1)
    per_class = [torch.randperm(positions, generator=generator)[:kept] for _ in range(4)]
    indices = torch.stack([per_class[int(c)] for c in classes])
    indices[5] = torch.randperm(positions, generator=generator)[:kept]
    base = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    tokens = base[classes] + 0.3 * torch.randn(batch, 6, generator=generator, dtype=torch.float64)
    tokens[7] = -tokens[6]  # a pair that fails the class-token gate
    references = pair_references(classes, torch.arange(batch))
    settings = ParSettings(ccs_min=0.5, ascs_min=0.7, top_fraction=0.34, strength=1.5)
    got, stats = reinforce(attention, indices, tokens, references, positions, settings)
    expected, gated = _naive_reinforce(attention, indices, tokens, references, positions, settings)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert stats.paired == batch and stats.gated == gated and 0 < gated < batch  # both outcomes occur
    assert not torch.allclose(got, attention)
    torch.testing.assert_close(got.sum(-1), torch.ones(batch, heads, kept, dtype=torch.float64))


def test_paper_gates_and_zero_strength() -> None:
    generator = torch.Generator().manual_seed(1)
    attention = torch.randn(4, 2, 4, 4, generator=generator).softmax(-1)
    indices = torch.stack([torch.randperm(6, generator=generator)[:4] for _ in range(4)])
    tokens = torch.randn(4, 3, generator=generator)
    references = torch.tensor([1, 0, 3, 2])
    unchanged, _ = reinforce(attention, indices, tokens, references, 6, ParSettings(-1.0, -1.0, 0.2, 0.0))
    torch.testing.assert_close(unchanged, attention)
    nothing, stats = reinforce(attention, indices, tokens, references, 6, ParSettings(1.0, 1.0, 0.2, 5.0))
    torch.testing.assert_close(nothing, attention)  # a cosine never exceeds 1: every pair fails the gates
    assert stats.gated == 0 and stats.paired == 4


def _tiny_model() -> encoders.PIRModel:
    torch.manual_seed(2)
    model = encoders.create_model(load_config("tiny-test")).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.vir.head.weight, std=0.5)
    return model


def test_vir_uses_the_reinforced_map_in_its_last_self_attention_only_inside_the_context() -> None:
    model = _tiny_model()
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randn(4, model.config.num_vision_tokens, model.config.embed_dim, generator=generator)
    feature = torch.randn(4, model.instruction.feature_dim, generator=generator)
    references = torch.tensor([1, 0, 3, 2])
    open_gates = ParSettings(ccs_min=-1.0, ascs_min=-1.0, top_fraction=0.2, strength=2.0)
    last = model.vir.self_blocks[-1].attention
    last.record = True
    try:
        plain = model.vir(tokens, feature)
        plain_map = last.last_record.attention
        with model.vir.reinforcing(references, open_gates):
            boosted = model.vir(tokens, feature)
        boosted_map = last.last_record.attention
        after = model.vir(tokens, feature)
    finally:
        last.record = False
    expected_map, stats = reinforce(plain_map, model.vir.last_selection.indices, tokens[:, 0] @ torch.eye(
        tokens.shape[-1]), references, tokens.shape[1], open_gates)
    torch.testing.assert_close(boosted_map, expected_map)
    assert stats.gated == 4 and not torch.allclose(boosted, plain)
    torch.testing.assert_close(after, plain)  # outside the context the model is unchanged


def test_engine_train_par_runs_and_records_its_gate_counts(tmp_path) -> None:
    import json

    from engine.cli import main as engine_main
    from training_fixtures import write_captioned_dataset

    data = write_captioned_dataset(tmp_path / "data")
    code = engine_main(["train", str(data), "--config", "tiny-test", "--epochs", "1", "--batch-size", "8",
                        "--feature-cache", str(tmp_path / "cache"), "--par", "--par-ccs", "-1", "--par-ascs", "-1",
                        "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["par"]["paired"] > 0 and history[0]["par"]["gated"] == history[0]["par"]["paired"]
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["par"] is True and config["par_top"] == 0.2


def test_par_needs_vir() -> None:
    from engine.errors import ConfigError
    from training.train_config import TrainConfig

    with pytest.raises(ConfigError, match="--par"):
        TrainConfig(par=True, use_vir=False)
    assert dataclasses.asdict(ParSettings()) == {"ccs_min": 0.7, "ascs_min": 0.7, "top_fraction": 0.2,
                                                 "strength": 1.0}
