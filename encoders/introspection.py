"""Attention inspection: per-head Q, K, V and attention maps of a chosen self-attention layer.

Vision transformers (Swin, ViT): the layer's own qkv projection is re-applied to the layer input captured by a
forward hook, and the attention map is read at the input of the layer's ``attn_drop`` (post-softmax, with Swin's
relative position bias). Fused attention bypasses ``attn_drop``, so it is switched off on the hooked modules for
the duration of the call only (the per-instance equivalent of ``timm.layers.set_fused_attn(False)``).
Swin attends inside 7x7 windows; only layers whose window covers the whole image (the last stage at 224 px) give
a whole-image map, other layers raise ``ConfigError`` listing the usable ones.

Convolutional backbones (EfficientNet, ResNet) have no self-attention: the Spatial-PAE self-attention layers of
VIR are used instead. Their tokens are the r_k kept tokens, ordered by instruction belief; ``token_indices`` maps
them back to positions in [global, grid tokens].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from encoders.attention import AttentionRecord, MultiHeadAttention
from engine.errors import ConfigError


@dataclass(frozen=True)
class AttentionResult:
    """Q/K/V (B, heads, N, d) and map (B, heads, N, N) of the chosen layer, and the last layer's map."""

    source: str  # "backbone" or "vir" or "lca"
    layer: int
    layer_name: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention: torch.Tensor
    last_attention: torch.Tensor
    token_indices: torch.Tensor | None = None  # VIR: (B, r_k) positions in [global, grid tokens]
    key_mask: torch.Tensor | None = None  # LCA: (B, L), True = real token


def backbone_attention_layers(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm self-attention modules in forward order: they own a fused ``qkv`` Linear and an ``attn_drop``."""
    return [
        (name, module)
        for name, module in backbone.named_modules()
        if isinstance(getattr(module, "qkv", None), nn.Linear)
        and hasattr(module, "attn_drop")
        and hasattr(module, "num_heads")
    ]


def vision_attention(model, pixels: torch.Tensor, layer: int = -1) -> AttentionResult:
    layers = backbone_attention_layers(model.vision.model)
    if not layers:
        if model.vir is None:
            raise ConfigError(
                f"vision backbone {model.config.vision.timm_name!r} has no self-attention and VIR is off: "
                "no attention layer to inspect"
            )
        blocks = [block.attention for block in model.vir.self_blocks]
        index = _resolve(layer, len(blocks), "VIR Spatial-PAE self-attention")
        records = _record(blocks, lambda: model.encode_image_view(pixels))
        selection = model.vir.last_selection
        return _result("vir", index, f"vir.self_blocks.{index % len(blocks)}", records, index,
                       token_indices=selection.indices if selection is not None else None)
    index = _resolve(layer, len(layers), f"{model.config.vision.timm_name} self-attention")
    chosen = {index % len(layers), len(layers) - 1}
    captures = {i: _capture_timm(layers[i][1]) for i in chosen}
    try:
        with torch.no_grad():
            model.vision(pixels)
    finally:
        for capture in captures.values():
            capture.remove()
    batch = pixels.shape[0]
    usable = [i for i in chosen if captures[i].tokens_per_image(batch)]
    if index % len(layers) not in usable:
        raise ConfigError(
            f"vision attention layer {layer} ({layers[index][0]}) attends within windows, not over the whole image; "
            f"the last layer (index {len(layers) - 1}) covers the whole image at this size"
        )
    chosen_record = captures[index % len(layers)].record()
    last = captures[len(layers) - 1]
    if len(layers) - 1 not in usable:
        raise ConfigError(f"the last attention layer of {model.config.vision.timm_name} attends within windows")
    return AttentionResult(
        "backbone", index % len(layers), layers[index][0], chosen_record.query, chosen_record.key,
        chosen_record.value, chosen_record.attention, last.record().attention,
    )


def text_attention(model, texts: list[str], cycle: int = -1) -> AttentionResult:
    if model.lca is None:
        raise ConfigError("this model has LCA switched off: no text attention layer to inspect")
    blocks = [block.attention for block in model.lca.self_blocks]
    index = _resolve(cycle, len(blocks), "LCA self-attention cycle")
    records = _record(blocks, lambda: model.encode_text(texts))
    return _result("lca", index, f"lca.self_blocks.{index}", records, index, key_mask=records[index].key_mask)


class _TimmCapture:
    """Hooks on one timm attention module: its input (for Q/K/V) and the post-softmax map (at attn_drop)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.inputs: torch.Tensor | None = None
        self.attention: torch.Tensor | None = None
        self.fused = getattr(module, "fused_attn", False)
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
        self.handles = [
            module.register_forward_pre_hook(self._on_input),
            module.attn_drop.register_forward_pre_hook(self._on_attention),
        ]

    def _on_input(self, _module: nn.Module, args: tuple) -> None:
        self.inputs = args[0].detach()

    def _on_attention(self, _module: nn.Module, args: tuple) -> None:
        self.attention = args[0].detach()

    def tokens_per_image(self, batch: int) -> bool:
        """True when the layer saw one sequence per image, i.e. no window partition."""
        return self.inputs is not None and self.inputs.reshape(-1, *self.inputs.shape[-2:]).shape[0] == batch

    def record(self) -> AttentionRecord:
        assert self.inputs is not None and self.attention is not None, "attention hooks did not fire"
        return self._compute()

    @torch.no_grad()
    def _compute(self) -> AttentionRecord:
        assert self.inputs is not None and self.attention is not None
        x = self.inputs.reshape(self.inputs.shape[0], -1, self.inputs.shape[-1])
        heads = int(self.module.num_heads)
        qkv = self.module.qkv(x).reshape(x.shape[0], x.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        query = getattr(self.module, "q_norm", nn.Identity())(query)
        key = getattr(self.module, "k_norm", nn.Identity())(key)
        return AttentionRecord(query, key, value, self.attention)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        if hasattr(self.module, "fused_attn"):
            self.module.fused_attn = self.fused


def _capture_timm(module: nn.Module) -> _TimmCapture:
    return _TimmCapture(module)


def _record(blocks: list[MultiHeadAttention], run) -> list[AttentionRecord]:
    for block in blocks:
        block.record = True
    try:
        with torch.no_grad():
            run()
    finally:
        for block in blocks:
            block.record = False
    records = [block.last_record for block in blocks]
    assert all(r is not None for r in records), "attention layers did not run"
    return records  # type: ignore[return-value]


def _result(source: str, index: int, name: str, records: list[AttentionRecord], chosen: int, **extra) -> AttentionResult:
    record = records[chosen]
    return AttentionResult(source, index, name, record.query, record.key, record.value, record.attention,
                           records[-1].attention, **extra)


def _resolve(layer: int, count: int, what: str) -> int:
    if not -count <= layer < count:
        raise ConfigError(f"layer {layer} is out of range: {what} has {count} layers (0..{count - 1} or -1)")
    return layer % count
