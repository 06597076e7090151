"""The PIR losses against naive per-row loops, and the schedule's shape."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import training  # noqa: F401  (torchvision shim)
from training.losses import (AFFILIATION_KINDS, LearnableTemperature, PIRLoss, affiliation, pir_affiliation,
                             soft_infonce)
from training.schedule import warmup_linear_factor


def _batch(seed: int, size: int = 12, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(size, dim, generator=generator, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(size, dim, generator=generator, dtype=torch.float64), dim=-1)
    image_ids = torch.randint(0, 6, (size,), generator=generator)
    class_of_image = torch.randint(0, 3, (6,), generator=generator)
    return images, texts, image_ids, class_of_image[image_ids]


def _naive_infonce(images, texts, ids, scale, groups=None):
    size = len(ids)
    total_i2t = total_t2i = 0.0
    for row in range(size):
        positives = [col for col in range(size)
                     if ids[col] == ids[row] or (groups is not None and groups[col] == groups[row])]
        i2t_logits = [scale * float(images[row] @ texts[col]) for col in range(size)]
        t2i_logits = [scale * float(texts[row] @ images[col]) for col in range(size)]
        i2t_norm = math.log(sum(math.exp(v) for v in i2t_logits))
        t2i_norm = math.log(sum(math.exp(v) for v in t2i_logits))
        total_i2t += -sum(i2t_logits[col] - i2t_norm for col in positives) / len(positives)
        total_t2i += -sum(t2i_logits[col] - t2i_norm for col in positives) / len(positives)
    return 0.5 * (total_i2t + total_t2i) / size


def _naive_affiliation(images, texts, classes, scale):
    present = sorted(set(classes.tolist()))
    def centre(vectors, cls):
        members = [vectors[i] for i in range(len(classes)) if classes[i] == cls]
        mean = sum(members) / len(members)
        return mean / mean.norm()
    text_centres = [centre(texts, c) for c in present]
    image_centres = [centre(images, c) for c in present]
    def ce(vectors, centres):
        total = 0.0
        for i in range(len(classes)):
            logits = [scale * float(vectors[i] @ c) for c in centres]
            norm = math.log(sum(math.exp(v) for v in logits))
            total += -(logits[present.index(int(classes[i]))] - norm)
        return total / len(classes)
    return 0.5 * (ce(images, text_centres) + ce(texts, image_centres))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_infonce_matches_naive_loop(seed):
    images, texts, ids, _ = _batch(seed)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    got = soft_infonce(images, texts, ids, scale).item()
    assert got == pytest.approx(_naive_infonce(images, texts, ids, float(scale)), rel=1e-9)


def _diagonal_clip(images, texts, scale):
    logits = scale * images @ texts.t()
    targets = torch.arange(len(images))
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def test_soft_infonce_treats_all_captions_of_an_image_alike():
    """Two pairs of one image carry different views (different image embeddings) and different captions: which
    view came with which caption must not matter, because each view's positives are both captions and each
    caption's positives are both views. Plain diagonal CLIP fails this (it makes the other pair a negative)."""
    images, texts, _, _ = _batch(7, size=6)
    ids = torch.tensor([0, 0, 1, 2, 3, 3])  # rows 0, 1 and rows 4, 5: two views + two captions of one image
    scale = torch.tensor(10.0, dtype=torch.float64)
    swapped = images[[1, 0, 2, 3, 4, 5]]
    loss, loss_swapped = soft_infonce(images, texts, ids, scale), soft_infonce(swapped, texts, ids, scale)
    assert loss.item() == pytest.approx(loss_swapped.item(), rel=1e-12)
    # the swap is a discriminating input: the diagonal loss moves by far more than rounding
    assert abs(_diagonal_clip(images, texts, scale) - _diagonal_clip(swapped, texts, scale)).item() > 1e-3
    assert loss.item() == pytest.approx(_naive_infonce(images, texts, ids, 10.0), rel=1e-9)


def test_soft_infonce_without_duplicates_is_the_clip_loss():
    images, texts, _, _ = _batch(8, size=6)
    scale = torch.tensor(14.0, dtype=torch.float64)
    logits = scale * images @ texts.t()
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    assert soft_infonce(images, texts, torch.arange(6), scale).item() == pytest.approx(clip.item(), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_affiliation_matches_naive_loop(seed):
    images, texts, _, classes = _batch(seed)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    got = affiliation(images, texts, classes, scale).item()
    assert got == pytest.approx(_naive_affiliation(images, texts, classes, float(scale)), rel=1e-9)


def _naive_pir_affiliation(images, texts, classes, scale):
    """PIR's affiliation loss written from its formula, one sample at a time."""
    size = len(classes)
    def centre(vectors, row):  # raw mean over the samples of row's class (no normalisation)
        members = [vectors[j] for j in range(size) if classes[j] == classes[row]]
        return sum(members) / len(members)
    text_centres = [centre(texts, k) for k in range(size)]
    image_centres = [centre(images, k) for k in range(size)]
    image_side = centre_side = 0.0
    for i in range(size):
        logits = [scale * float(images[i] @ text_centres[k]) for k in range(size)]
        image_side += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
        logits = [scale * float(image_centres[i] @ texts[k]) for k in range(size)]
        centre_side += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return 0.5 * (image_side + centre_side) / size


@pytest.mark.parametrize("seed", [0, 3, 9])
def test_pir_affiliation_matches_naive_loop(seed):
    images, texts, _, classes = _batch(seed, size=14)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    got = pir_affiliation(images, texts, classes, scale).item()
    assert got == pytest.approx(_naive_pir_affiliation(images, texts, classes, float(scale)), rel=1e-9)
    # the two formulas are different losses on the same batch
    assert not math.isclose(got, affiliation(images, texts, classes, scale).item(), rel_tol=1e-3)


def test_pir_affiliation_has_the_class_frequency_floor_and_the_prototype_loss_does_not():
    """Perfectly clustered embeddings: PIR's loss tends to the mean log class count (its target is one of n_c
    identical centres), the prototype loss to 0."""
    classes = torch.tensor([0, 0, 0, 1, 2, 2])
    axes = torch.eye(3, dtype=torch.float64)
    images = texts = axes[classes]
    scale = torch.tensor(100.0, dtype=torch.float64)
    counts = torch.tensor([3.0, 3.0, 3.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    assert pir_affiliation(images, texts, classes, scale).item() == pytest.approx(counts.log().mean().item(), abs=1e-6)
    assert affiliation(images, texts, classes, scale).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", [affiliation, pir_affiliation])
def test_affiliation_ignores_unlabelled_rows(loss):
    images, texts, _, classes = _batch(4, size=10)
    scale = torch.tensor(5.0, dtype=torch.float64)
    marked = classes.clone()
    marked[[2, 7]] = -1
    keep = marked >= 0
    assert loss(images, texts, marked, scale).item() == pytest.approx(
        loss(images[keep], texts[keep], classes[keep], scale).item(), rel=1e-12)
    none = torch.full_like(classes, -1)
    assert loss(images, texts, none, scale).item() == 0.0


def test_pir_loss_uses_the_chosen_affiliation():
    images, texts, ids, classes = _batch(6)
    for kind, formula in (("pir", _naive_pir_affiliation), ("prototype", _naive_affiliation)):
        parts = PIRLoss(affiliation_kind=kind)(images.float(), texts.float(), ids, classes)
        assert parts.affiliation.item() == pytest.approx(formula(images, texts, classes, 1 / 0.07), rel=1e-4)
    with pytest.raises(ValueError, match="affiliation kind"):
        PIRLoss(affiliation_kind="centre")


def test_train_config_knows_every_affiliation_kind():
    from training.train_config import AFFILIATIONS, TrainConfig
    from engine.errors import ConfigError

    assert tuple(AFFILIATIONS) == tuple(AFFILIATION_KINDS)
    with pytest.raises(ConfigError, match="--affiliation"):
        TrainConfig(affiliation="centre")


def test_pir_loss_combines_parts_and_has_gradients():
    images, texts, ids, classes = _batch(5)
    images = images.float().requires_grad_(True)
    criterion = PIRLoss(use_affiliation=True, affiliation_weight=0.5)
    parts = criterion(images, texts.float(), ids, classes)
    assert parts.total.item() == pytest.approx(parts.contrastive.item() + 0.5 * parts.affiliation.item(), rel=1e-6)
    parts.total.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert criterion.contrastive_temperature.log_inverse.grad is not None
    assert criterion.affiliation_temperature.log_inverse.grad is not None
    without = PIRLoss(use_affiliation=False)(images, texts.float(), ids)
    assert without.affiliation is None and without.total.item() == pytest.approx(parts.contrastive.item(), rel=1e-6)


def test_temperature_initial_value_and_clamp():
    temperature = LearnableTemperature(0.07)
    assert temperature.value() == pytest.approx(0.07, rel=1e-6)
    with torch.no_grad():
        temperature.log_inverse.fill_(20.0)  # 1/τ = e^20: must clamp to τ = 0.01
    assert temperature.value() == pytest.approx(0.01, rel=1e-6)


def test_schedule_warmup_then_linear_decay():
    total = 100
    factors = [warmup_linear_factor(step, total, 0.1) for step in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10]))  # rising warm-up
    assert all(a > b for a, b in zip(factors[10:-1], factors[11:]))  # strictly falling afterwards
    assert factors[-1] == pytest.approx(1 / 90) and factors[-1] > 0
    assert warmup_linear_factor(0, 10, 0.0) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_caption_positives_match_naive_loop(seed):
    """Captions that read the same (same group) are positives across images; without groups nothing changes."""
    images, texts, ids, classes = _batch(seed)
    groups = torch.randint(0, 5, (len(ids),), generator=torch.Generator().manual_seed(seed + 10))
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    got = soft_infonce(images, texts, ids, scale, groups)
    assert math.isclose(float(got), _naive_infonce(images, texts, ids, float(scale), groups), rel_tol=1e-9)
    assert not math.isclose(float(got), float(soft_infonce(images, texts, ids, scale)), rel_tol=1e-6)
    criterion = PIRLoss(use_affiliation=False, same_caption_positives=True)
    assert math.isclose(float(criterion(images.float(), texts.float(), ids, classes, groups).total.detach()),
                        _naive_infonce(images, texts, ids, 1 / 0.07, groups), rel_tol=1e-4)
    with pytest.raises(ValueError, match="caption groups"):
        criterion(images.float(), texts.float(), ids, classes)


def test_caption_groups_ignore_case_spacing_and_final_stop():
    from training.pairs import caption_key

    assert caption_key("This is a dense  forest .") == caption_key("this is a dense forest") == "this is a dense forest"
    assert caption_key("a river") != caption_key("a rivers")


def _naive_hard_negative_infonce(images, texts, ids, scale, beta):
    size = len(ids)
    total = 0.0
    for anchors, others in ((images, texts), (texts, images)):
        for row in range(size):
            positives = [col for col in range(size) if ids[col] == ids[row]]
            negatives = [col for col in range(size) if ids[col] != ids[row]]
            cos = [float(anchors[row] @ others[col]) for col in range(size)]
            mass = sum(math.exp(beta * cos[col]) for col in negatives)
            weight = {col: len(negatives) * math.exp(beta * cos[col]) / mass for col in negatives}
            denominator = (sum(math.exp(scale * cos[col]) for col in positives)
                           + sum(weight[col] * math.exp(scale * cos[col]) for col in negatives))
            total += -sum(scale * cos[col] - math.log(denominator) for col in positives) / len(positives)
    return 0.5 * total / size


@pytest.mark.parametrize("beta", [2.0, 10.0])
def test_hard_negatives_match_naive_loop_and_beta_zero_is_plain(beta):
    images, texts, ids, _ = _batch(3)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    got = soft_infonce(images, texts, ids, scale, hard_negative_beta=beta)
    assert math.isclose(float(got), _naive_hard_negative_infonce(images, texts, ids, float(scale), beta), rel_tol=1e-9)
    assert float(got) > float(soft_infonce(images, texts, ids, scale))  # hard negatives weigh more
    assert math.isclose(float(soft_infonce(images, texts, ids, scale, hard_negative_beta=0.0)),
                        _naive_infonce(images, texts, ids, float(scale)), rel_tol=1e-9)


def test_hard_negatives_survive_a_batch_of_one_image():
    """Every pair a positive: no negatives to weight, no nan."""
    images, texts, _, _ = _batch(4, size=5)
    ids = torch.zeros(5, dtype=torch.long)
    value = soft_infonce(images, texts, ids, torch.tensor(10.0, dtype=torch.float64), hard_negative_beta=5.0)
    assert torch.isfinite(value)
