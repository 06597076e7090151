"""PIRModel: backbones + instruction encoder + projections + VIR/LCA, with a token-level split for training.

Encoding is split in two so that training can cache the outputs of frozen backbones and run only the heads:
    tokens = model.forward_image_tokens(pixels)        # backbones (expensive)
    v = model.encode_image_from_tokens(*tokens)         # projections + VIR (cheap)
    text = model.forward_text_tokens(texts)
    t = model.encode_text_from_tokens(text.hidden, text.mask)
``encode_image_view`` / ``encode_text`` chain both halves; ``encode_image`` averages ``encode_image_view`` over
the configured dihedral views (``vision.test_time_views``, 1 unless a model says otherwise). They follow the
caller's grad mode (training calls them too); for indexing, call ``model.eval()`` and wrap them in
``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from encoders.model_config import ModelConfig
from encoders.instruction import InstructionEncoder, shared_backbone_state
from encoders.pae import LanguageCycleAttention, VisualInstructionRefiner, masked_mean
from encoders.text import TextBackbone, TextBatch
from encoders.views import view_averaged
from encoders.vision import VisionBackbone
from engine.errors import ConfigError


@dataclass(frozen=True)
class ImageTokens:
    """Backbone outputs for a batch: global (B, C), patch tokens (B, N, C), instruction feature (B, F) or None."""

    global_token: torch.Tensor
    patch_tokens: torch.Tensor
    instruction_feature: torch.Tensor | None


@dataclass(frozen=True)
class TextTokens:
    """Text backbone hidden states (B, L, H) and the attention mask (B, L), 1 = real token."""

    hidden: torch.Tensor
    mask: torch.Tensor


class PIRModel(nn.Module):
    """The PIR retrieval model; ``use_vir`` / ``use_lca`` off give the contrastive-only baseline on the same code."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        head = config.head
        self.vision = VisionBackbone(config.vision)
        self.text = TextBackbone(config.text)
        self.vision_proj = nn.Linear(self.vision.width, head.embed_dim)
        self.text_proj = nn.Linear(self.text.width, head.embed_dim)
        self.instruction: InstructionEncoder | None = None
        self.vir: VisualInstructionRefiner | None = None
        if head.use_vir:
            self.instruction = InstructionEncoder(config.instruction, shared_width=self.vision.width)
            self.vir = VisualInstructionRefiner(head, self.instruction.feature_dim)
        self.lca = LanguageCycleAttention(head) if head.use_lca else None
        shared = shared_backbone_state(config.instruction)
        if shared:
            self._apply_shared_backbone_state(shared)
        self._fingerprint_cache: dict[int, tuple[tuple[int, ...], str]] | None = None  # views -> (version, sha)
        # querybank normalisation of text->image scores (encoders.query_bank); set by load_model when the
        # checkpoint folder has one. Not a weight: the fingerprint does not cover it, search records its digest.
        self.query_bank = None

    def _apply_shared_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load the AID-trained backbone tensors of the instruction weights into the shared vision network."""
        network = self.vision.model
        current = network.state_dict()
        wrong = [key for key in state if key not in current or current[key].shape != state[key].shape]
        if wrong:
            raise ConfigError(f"instruction.weights: shared-backbone tensor {wrong[0]!r} does not fit vision backbone "
                              f"{self.config.vision.timm_name!r} ({len(wrong)} of {len(state)} do not)")
        network.load_state_dict({**current, **state}, strict=True)

    @property
    def device(self) -> torch.device:
        return self.vision_proj.weight.device

    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> (3, H, W) float tensor with the backbone's own normalisation."""
        return self.vision.image_transform(train)

    # ---- images -------------------------------------------------------------------------------------------
    def forward_image_tokens(self, pixels: torch.Tensor) -> ImageTokens:
        self._check_pixels(pixels)
        global_token, patch_tokens = self.vision(pixels)
        instruction_feature = None
        if self.instruction is not None:
            if self.instruction.backbone is None:
                instruction_feature = self.instruction.instruction_from_pooled(global_token)
            else:
                instruction_feature = self.instruction.instruction_feature(pixels)
        return ImageTokens(global_token, patch_tokens, instruction_feature)

    def encode_image_from_tokens(
        self, global_token: torch.Tensor, patch_tokens: torch.Tensor, instruction_feature: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, C) + (B, N, C) [+ (B, F)] -> (B, D) float32, L2-normalised."""
        if self.vir is None:  # only the global token matters: skip projecting the patch tokens (CPU cost)
            return F.normalize(self.vision_proj(global_token).float(), dim=-1)
        if instruction_feature is None:
            raise ConfigError("this model uses VIR: encode_image_from_tokens needs the instruction feature")
        tokens = self.vision_proj(torch.cat([global_token.unsqueeze(1), patch_tokens], dim=1))
        embedding = tokens[:, 0] + self.vir(tokens, instruction_feature)
        return F.normalize(embedding.float(), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D): the embedding averaged over ``vision.test_time_views`` dihedral views."""
        self._check_pixels(pixels)
        return view_averaged(self.encode_image_view, pixels, self.config.vision.test_time_views)

    def encode_image_view(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D) from these pixels only: one backbone pass, whatever ``test_time_views`` says."""
        tokens = self.forward_image_tokens(pixels)
        return self.encode_image_from_tokens(tokens.global_token, tokens.patch_tokens, tokens.instruction_feature)

    # ---- text ---------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> TextBatch:
        """First ``max_words`` words, at most ``max_tokens`` tokens, padded to the longest caption of the batch."""
        return self.text.tokenize(texts)

    def forward_text_tokens(self, texts: list[str] | TextBatch) -> TextTokens:
        batch = texts if isinstance(texts, TextBatch) else self.tokenize(texts)
        batch = batch.to(self.device)
        return TextTokens(self.text(batch), batch.attention_mask)

    def encode_text_from_tokens(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, H) hidden states + (B, L) mask -> (B, D) float32, L2-normalised; padding never matters."""
        # The projection is affine, so projecting the pooled hidden state equals pooling the projected tokens;
        # projecting every token is only paid for when LCA needs them.
        if self.config.text.pooling == "mean":
            pooled = masked_mean(hidden, mask)
        else:
            pooled = hidden[:, 0]
        embedding = self.text_proj(pooled)
        if self.lca is not None:
            embedding = embedding + self.lca(self.text_proj(hidden), mask)
        return F.normalize(embedding.float(), dim=-1)

    def encode_text(self, texts: list[str] | TextBatch) -> torch.Tensor:
        tokens = self.forward_text_tokens(texts)
        return self.encode_text_from_tokens(tokens.hidden, tokens.mask)

    def set_test_time_views(self, views: int) -> PIRModel:
        """Use ``views`` dihedral views in ``encode_image`` from now on (validated); the fingerprint follows."""
        self.config = self.config.replace(vision=replace(self.config.vision, test_time_views=views))
        self._fingerprint_cache = None
        return self

    # ---- identity and inspection --------------------------------------------------------------------------
    def fingerprint(self, one_view: bool = False) -> str:
        """sha256 of the canonical config JSON and every weight; recomputed only when a weight has changed.
        ``one_view``: the same with the config's test-time views set to 1 — the identity of what one forward pass
        computes (compiled graphs encode one view and are shared by every number of views)."""
        from encoders.fingerprint import compute_fingerprint

        state = self.state_dict()
        version = tuple(t._version for t in state.values()) + tuple(t.data_ptr() for t in state.values())
        config = self.config
        if one_view:
            config = config.replace(vision=replace(config.vision, test_time_views=1))
        cached = self._fingerprint_cache or {}
        if cached.get(config.vision.test_time_views, (None,))[0] != version:
            cached = {**cached, config.vision.test_time_views: (version, compute_fingerprint(config, state))}
            self._fingerprint_cache = cached
        return cached[config.vision.test_time_views][1]

    def vision_attention(self, pixels: torch.Tensor, layer: int = -1):  # -> encoders.introspection.AttentionResult
        """Q/K/V and attention map of one vision self-attention layer, plus the last layer's attention map."""
        from encoders.introspection import vision_attention

        return vision_attention(self, pixels, layer)

    def text_attention(self, texts: list[str], cycle: int = -1):  # -> encoders.introspection.AttentionResult
        """Q/K/V and attention map of one LCA self-attention cycle (with the padding mask), plus the last one."""
        from encoders.introspection import text_attention

        return text_attention(self, texts, cycle)

    def train(self, mode: bool = True) -> PIRModel:
        super().train(mode)
        if self.instruction is not None and self.instruction.frozen:
            self.instruction.eval()
        return self

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        size = self.config.vision.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ConfigError(f"encode_image expects pixels shaped (B, 3, {size}, {size}), got {tuple(pixels.shape)}")
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ConfigError(
                f"encode_image expects {size}x{size} images (vision.image_size), got "
                f"{pixels.shape[-2]}x{pixels.shape[-1]}; use model.image_transform()"
            )
