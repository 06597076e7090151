"""Model-based foreground: where a trained PIR model looks, as a grid over the image's patch tokens.

Two sources, both from VIR (the model's instruction-guided token filter):
- ``vir-belief``: VIR's belief score of each of the N patch tokens, ⟨token, v_ins⟩ (the logit whose softmax over
  [global, patches] is VIR's belief, by which it keeps its r_k tokens). The logit, not the softmax: on the
  shipped model the logits of one image span 20–100, so the softmax is close to one-hot, and a threshold on it
  kept 4 % of UCM's pixels (its single most believed patch); the logits order the patches the same way;
- ``vir-attention``: the attention each patch receives in VIR's last self-attention (averaged over heads and
  queries), 0 for the patches VIR dropped.
The grid (B, g, g) is scaled to [0, 1] per image; ``engine.data.masking`` upsamples it to the image's pixels and
thresholds it (``engine index masks``). The image is seen whole (resized to the model's input size, no centre
crop), so the grid covers every pixel of the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.errors import ConfigError

FOREGROUND_SOURCES = ("vir-belief", "vir-attention")


def patch_saliency(model, pixels: torch.Tensor, source: str) -> torch.Tensor:
    """(B, 3, S, S) model-normalised pixels -> (B, g, g) saliency in [0, 1] (g = vision.token_grid)."""
    if source not in FOREGROUND_SOURCES:
        raise ConfigError(f"foreground source must be one of {', '.join(FOREGROUND_SOURCES)}, got {source!r}")
    if model.vir is None:
        raise ConfigError(f"--source {source}: this model has no VIR (trained with --no-vir), so it has no "
                          "instruction belief or VIR attention to take a foreground from")
    grid = model.config.vision.token_grid
    last = model.vir.self_blocks[-1].attention
    last.record = source == "vir-attention"
    try:
        with torch.no_grad():
            tokens = model.forward_image_tokens(pixels)
            model.encode_image_from_tokens(tokens.global_token, tokens.patch_tokens, tokens.instruction_feature)
    finally:
        last.record = False
    selection = model.vir.last_selection
    if source == "vir-belief":
        with torch.no_grad():
            projected = model.vision_proj(torch.cat([tokens.global_token[:, None], tokens.patch_tokens], dim=1))
            instruction = model.vir.instruction_proj(tokens.instruction_feature)
            values = torch.einsum("bnd,bd->bn", projected, instruction)[:, 1:]
    else:
        received = last.last_record.attention.mean(dim=1).sum(dim=1)  # (B, K): attention each kept token gets
        values = torch.zeros_like(selection.belief).scatter(1, selection.indices, received)[:, 1:]
    values = values.float().reshape(-1, grid, grid)
    low = values.amin(dim=(1, 2), keepdim=True)
    high = values.amax(dim=(1, 2), keepdim=True)
    return torch.where(high - low > 0, (values - low) / (high - low).clamp(min=1e-12), torch.zeros_like(values))


def upsample_grid(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(g, g) grid -> (height, width), bilinear (align_corners=False): a smooth map at pixel resolution."""
    return F.interpolate(grid[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
