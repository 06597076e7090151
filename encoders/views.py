"""The 8 dihedral views of a square overhead image, and averaging an image embedding over the first N of them.

Why: an aerial or satellite tile has no canonical "up", so a flipped or rotated tile is the same scene. Training
samples these views as augmentation (``training.feature_cache``); at inference the model can average its
embedding over the same views (``vision.test_time_views``), which makes the embedding closer to invariant.
The order matters: the first N views are the ones training caches with ``--views N``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover  (torch stays unimported: encoders.model_config reads VIEW_NAMES)
    import torch

VIEW_NAMES = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")

_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.rot90(1, (-2, -1)).flip(-1),
}


def apply_view(pixels: torch.Tensor, view: int) -> torch.Tensor:
    """One of the 8 dihedral transforms of a (B, 3, H, W) batch of square images."""
    return _TRANSFORMS[VIEW_NAMES[view]](pixels)


def view_averaged(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, views: int) -> torch.Tensor:
    """normalise(sum over the first ``views`` views of encode(view)); ``encode`` returns L2-normalised rows.

    One ``encode`` call per view, each on the caller's batch: stacking all views into one batch of B * views
    images was measured slower on CPU (the activations outgrow the caches; docs/benchmarks.md), and a GPU already
    gets the caller's batch size.
    """
    import torch.nn.functional as F

    total = encode(pixels)
    if views == 1:
        return total
    for view in range(1, views):
        total = total + encode(apply_view(pixels, view))
    return F.normalize(total, dim=-1)
