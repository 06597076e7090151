"""PIR's training objective: soft-target symmetric InfoNCE plus the affiliation (class-centre) loss.

Two affiliation losses (``--affiliation``): ``pir`` is PIR's formula (raw class means duplicated per sample,
image vs text centres and image centre vs texts); ``prototype`` (the default, what every model trained before
the option existed used) normalises the class means, runs the softmax over the classes present once each, and
compares texts with image centres. Both take embeddings + integer class ids (negative = unlabelled).

Why soft targets: a batch holds (image, caption) pairs, so the same image can appear several times with
different captions. Treating only the diagonal as positive would push apart captions that describe the same
image; instead every pair sharing an image id is a positive and the target distribution of a row is uniform
over its positives. Under torch.distributed the embeddings and ids are gathered (with gradient) first, so the
loss is exactly the loss of one process that saw the whole global batch.

Optionally (``same_caption_positives``) a caption that reads exactly like the row's own caption is a positive
too, whichever image it belongs to: on UCM-captions most captions are shared by several images ("This is a
dense forest."), and as negatives they would pull one text embedding towards several images and push it away
from each of them in the same step.

Hard negatives (``hard_negative_beta`` β > 0, HN-NCE after Radenovic et al. 2023): in each row's softmax
denominator a negative j is weighted by w_j = n_neg · exp(β cos_j) / Σ_negatives exp(β cos), so the weights
average 1 and the negatives most similar to the anchor count more (β = 0 is plain InfoNCE). The weights are
constants of the step (no gradient flows through them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import gather_labels, gather_with_gradient

DEFAULT_TEMPERATURE = 0.07
# CLIP-style bounds: a temperature below 1/100 makes logits explode, above 1 makes the loss flat.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 1.0


class LearnableTemperature(nn.Module):
    """A temperature stored as log(1/τ) so that it stays positive; clamped to [MIN, MAX] when used."""

    def __init__(self, initial: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__()
        if not MIN_TEMPERATURE <= initial <= MAX_TEMPERATURE:
            raise ValueError(f"temperature {initial} outside [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        self.log_inverse = nn.Parameter(torch.tensor(math.log(1.0 / initial)))

    def scale(self) -> torch.Tensor:
        """1/τ, clamped, as a 0-d tensor that carries gradient inside the bounds."""
        return self.log_inverse.clamp(math.log(1.0 / MAX_TEMPERATURE), math.log(1.0 / MIN_TEMPERATURE)).exp()

    def value(self) -> float:
        return float(1.0 / self.scale().item())


def soft_infonce(image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
                 scale: torch.Tensor, caption_groups: torch.Tensor | None = None,
                 hard_negative_beta: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE where every pair (i, j) with the same image id is a positive (row-normalised targets);
    with ``caption_groups``, so is every pair whose captions are the same caption."""
    cosines = image_emb @ text_emb.t()
    logits = scale * cosines
    same = image_ids[:, None] == image_ids[None, :]
    if caption_groups is not None:
        same = same | (caption_groups[:, None] == caption_groups[None, :])
    positives = same.to(logits.dtype)
    row_logits, column_logits = logits, logits.t()
    if hard_negative_beta > 0:
        row_logits = row_logits + _negative_log_weights(cosines, same, hard_negative_beta)
        column_logits = column_logits + _negative_log_weights(cosines.t(), same.t(), hard_negative_beta)
    image_to_text = -(positives / positives.sum(dim=1, keepdim=True) * F.log_softmax(row_logits, dim=1)).sum(1)
    text_to_image = -(positives.t() / positives.t().sum(dim=1, keepdim=True)
                      * F.log_softmax(column_logits, dim=1)).sum(1)
    return 0.5 * (image_to_text.mean() + text_to_image.mean())


def _negative_log_weights(cosines: torch.Tensor, positive: torch.Tensor, beta: float) -> torch.Tensor:
    """log w per entry: 0 on positives; on negatives log(n_neg · softmax over the row's negatives of β·cos)."""
    negative = ~positive
    scores = (beta * cosines.detach()).masked_fill(positive, float("-inf"))
    count = negative.sum(dim=1, keepdim=True).to(cosines.dtype)
    log_weights = scores - torch.logsumexp(scores, dim=1, keepdim=True) + count.log()
    return log_weights.masked_fill(positive, 0.0)  # also clears rows without negatives (nan there)


AFFILIATION_KINDS = ("prototype", "pir")


def affiliation(image_emb: torch.Tensor, text_emb: torch.Tensor, class_ids: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """``--affiliation prototype`` (this engine's variant; the default): each image against the per-class text
    prototypes of the batch and each text against the image prototypes.

    A prototype is the L2-normalised mean of the batch's samples of one class; the cross-entropy runs over the
    classes present in the batch, once per class (no class-frequency prior). Rows with a negative class id (no
    label) take no part; a batch without labelled rows gives 0.
    """
    image_emb, text_emb, class_ids = _labelled(image_emb, text_emb, class_ids)
    if class_ids.numel() == 0:
        return image_emb.sum() * 0.0
    present, class_index = torch.unique(class_ids, sorted=True, return_inverse=True)
    membership = F.one_hot(class_index, num_classes=present.numel()).to(image_emb.dtype)  # (B, C)
    counts = membership.sum(dim=0, keepdim=True).t()  # (C, 1)
    text_centres = F.normalize(membership.t() @ text_emb / counts, dim=-1)
    image_centres = F.normalize(membership.t() @ image_emb / counts, dim=-1)
    image_loss = F.cross_entropy(scale * image_emb @ text_centres.t(), class_index)
    text_loss = F.cross_entropy(scale * text_emb @ image_centres.t(), class_index)
    return 0.5 * (image_loss + text_loss)


def pir_affiliation(image_emb: torch.Tensor, text_emb: torch.Tensor, class_ids: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """``--affiliation pir``: the affiliation loss exactly as PIR's formula (and reference code) defines it.

    For every sample i of the batch, C^T_i = mean of the text embeddings and C^V_i = mean of the image
    embeddings of the samples of i's class (raw means, not normalised; one copy per sample, so a class with n
    samples has n identical centres in the batch). With s = 1/τ:
        L_v = -1/B Σ_i log( exp(s v_i·C^T_i) / Σ_k exp(s v_i·C^T_k) )     image i against every sample's text centre
        L_t = -1/B Σ_i log( exp(s C^V_i·t_i) / Σ_k exp(s C^V_i·t_k) )     i's image centre against every text
        L_a = (L_v + L_t) / 2
    The duplicated centres make the denominator weight each class by its count in the batch (a class-frequency
    prior), and the target is i's own copy, so the loss cannot fall below the mean log class count. Rows with a
    negative class id (no label) take no part; a batch without labelled rows gives 0. Centres are taken over the
    whole (gathered) batch; the reference code takes them per GPU before gathering.
    """
    image_emb, text_emb, class_ids = _labelled(image_emb, text_emb, class_ids)
    if class_ids.numel() == 0:
        return image_emb.sum() * 0.0
    same = (class_ids[:, None] == class_ids[None, :]).to(image_emb.dtype)  # (B, B)
    counts = same.sum(dim=1, keepdim=True)
    text_centres = same @ text_emb / counts  # row i: C^T_i
    image_centres = same @ image_emb / counts  # row i: C^V_i
    targets = torch.arange(class_ids.numel(), device=class_ids.device)
    image_loss = F.cross_entropy(scale * image_emb @ text_centres.t(), targets)
    centre_loss = F.cross_entropy(scale * image_centres @ text_emb.t(), targets)
    return 0.5 * (image_loss + centre_loss)


def _labelled(image_emb: torch.Tensor, text_emb: torch.Tensor,
              class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows with a class label (id >= 0)."""
    keep = class_ids >= 0
    if bool(keep.all()):
        return image_emb, text_emb, class_ids
    return image_emb[keep], text_emb[keep], class_ids[keep]


AFFILIATION_LOSSES = {"prototype": affiliation, "pir": pir_affiliation}


@dataclass
class LossParts:
    """The total and its parts (detached floats for logging live in ``as_floats``)."""

    total: torch.Tensor
    contrastive: torch.Tensor
    affiliation: torch.Tensor | None

    def as_floats(self) -> dict[str, float]:
        parts = {"loss": float(self.total.detach()), "contrastive": float(self.contrastive.detach())}
        if self.affiliation is not None:
            parts["affiliation"] = float(self.affiliation.detach())
        return parts


class PIRLoss(nn.Module):
    """L = Lc + λ·La with two learnable temperatures; gathers across ranks when distributed."""

    def __init__(self, use_affiliation: bool = True, affiliation_weight: float = 1.0,
                 temperature: float = DEFAULT_TEMPERATURE, affiliation_temperature: float = DEFAULT_TEMPERATURE,
                 same_caption_positives: bool = False, hard_negative_beta: float = 0.0,
                 affiliation_kind: str = "prototype") -> None:
        super().__init__()
        if affiliation_kind not in AFFILIATION_LOSSES:
            raise ValueError(f"affiliation kind must be one of {', '.join(AFFILIATION_KINDS)}, got {affiliation_kind!r}")
        self.affiliation_kind = affiliation_kind
        self.same_caption_positives = same_caption_positives
        self.hard_negative_beta = hard_negative_beta
        self.use_affiliation = use_affiliation
        self.affiliation_weight = affiliation_weight
        self.contrastive_temperature = LearnableTemperature(temperature)
        self.affiliation_temperature = LearnableTemperature(affiliation_temperature)
        if not use_affiliation:
            self.affiliation_temperature.requires_grad_(False)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor,
                class_ids: torch.Tensor | None = None, caption_groups: torch.Tensor | None = None) -> LossParts:
        image_all = gather_with_gradient(image_emb.float())
        text_all = gather_with_gradient(text_emb.float())
        ids_all = gather_labels(image_ids)
        groups_all = None
        if self.same_caption_positives:
            if caption_groups is None:
                raise ValueError("same_caption_positives needs caption groups")
            groups_all = gather_labels(caption_groups)
        contrastive = soft_infonce(image_all, text_all, ids_all, self.contrastive_temperature.scale(), groups_all,
                                   self.hard_negative_beta)
        if not self.use_affiliation:
            return LossParts(contrastive, contrastive, None)
        if class_ids is None:
            raise ValueError("affiliation loss needs class ids")
        classes_all = gather_labels(class_ids)
        aff = AFFILIATION_LOSSES[self.affiliation_kind](image_all, text_all, classes_all,
                                                        self.affiliation_temperature.scale())
        return LossParts(contrastive + self.affiliation_weight * aff, contrastive, aff)
