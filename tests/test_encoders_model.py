"""PIRModel on tiny-test: shapes, norms, padding-mask invariance, VIR selection, ablation paths, attention."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import encoders
from encoders.model_config import load_config
from encoders.pae import select_tokens
from engine.errors import ConfigError

CAPTIONS = ["a plane", "many green trees are planted around the white buildings next to a long straight road"]


def with_trained_looking_heads(model: encoders.PIRModel) -> encoders.PIRModel:
    """VIR/LCA heads start at zero (a residual correction); give them weights so their inputs matter in tests."""
    with torch.no_grad():
        for refiner in (model.vir, model.lca):
            if refiner is not None:
                torch.nn.init.normal_(refiner.head.weight, std=0.5)
    return model


@pytest.fixture(scope="module")
def model() -> encoders.PIRModel:
    torch.manual_seed(0)
    return with_trained_looking_heads(encoders.create_model("tiny-test")).eval()


def _pixels(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, 96, 96, generator=torch.Generator().manual_seed(1))


def test_embeddings_are_normalised_float32(model: encoders.PIRModel) -> None:
    with torch.inference_mode():
        images = model.encode_image(_pixels())
        texts = model.encode_text(CAPTIONS)
    assert images.shape == (3, model.config.embed_dim) and texts.shape == (2, model.config.embed_dim)
    assert images.dtype == texts.dtype == torch.float32
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))


def test_refinement_heads_start_at_zero() -> None:
    """A fresh model embeds exactly like its projection-only twin: VIR/LCA begin as a zero residual."""
    torch.manual_seed(0)
    fresh = encoders.create_model("tiny-test").eval()
    assert fresh.vir is not None and fresh.lca is not None
    with torch.inference_mode():
        tokens = fresh.forward_image_tokens(_pixels(2))
        refined = fresh.encode_image_from_tokens(tokens.global_token, tokens.patch_tokens, tokens.instruction_feature)
        plain = torch.nn.functional.normalize(fresh.vision_proj(tokens.global_token), dim=-1)
        torch.testing.assert_close(refined, plain)


def test_caption_embedding_ignores_batch_padding(model: encoders.PIRModel) -> None:
    with torch.inference_mode():
        alone = model.encode_text([CAPTIONS[0]])
        padded = model.encode_text(CAPTIONS)
    assert model.tokenize(CAPTIONS).attention_mask[0].sum() < model.tokenize(CAPTIONS).attention_mask.shape[1]
    assert (alone[0] - padded[0]).abs().max() < 1e-5


def test_padding_changes_the_result_without_the_mask(model: encoders.PIRModel) -> None:
    """The invariance above is due to the mask: feeding padding as real tokens must change the embedding."""
    batch = model.tokenize(CAPTIONS)
    with torch.inference_mode():
        hidden = model.forward_text_tokens(batch).hidden
        masked = model.encode_text_from_tokens(hidden, batch.attention_mask)
        unmasked = model.encode_text_from_tokens(hidden, torch.ones_like(batch.attention_mask))
    assert (masked[0] - unmasked[0]).abs().max() > 1e-4
    torch.testing.assert_close(masked[1], unmasked[1])


def test_token_split_equals_end_to_end(model: encoders.PIRModel) -> None:
    pixels = _pixels(2)
    with torch.inference_mode():
        tokens = model.forward_image_tokens(pixels)
        split = model.encode_image_from_tokens(tokens.global_token, tokens.patch_tokens, tokens.instruction_feature)
        text = model.forward_text_tokens(CAPTIONS)
        torch.testing.assert_close(split, model.encode_image(pixels))
        torch.testing.assert_close(model.encode_text_from_tokens(text.hidden, text.mask), model.encode_text(CAPTIONS))
    assert tokens.patch_tokens.shape == (2, 9, model.vision.width)
    with pytest.raises(ConfigError, match="instruction feature"):
        model.encode_image_from_tokens(tokens.global_token, tokens.patch_tokens, None)


def test_select_tokens_keeps_top_beliefs_in_order() -> None:
    tokens = torch.eye(5).unsqueeze(0).repeat(2, 1, 1)  # token i = unit vector e_i
    instruction = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 0.0, 1.0, 0.2, 4.0]])
    selection = select_tokens(tokens, instruction, keep=3)
    assert selection.indices.tolist() == [[1, 3, 4], [0, 4, 2]]
    torch.testing.assert_close(selection.belief, instruction.softmax(dim=-1))
    torch.testing.assert_close(selection.tokens[0], torch.eye(5)[[1, 3, 4]])


def test_r_k_larger_than_token_count_is_a_config_error() -> None:
    config = load_config("tiny-test")
    with pytest.raises(ConfigError, match="head.r_k 11 exceeds the 10 vision tokens"):
        config.replace(head=dataclasses.replace(config.head, r_k=11))


def test_vir_and_lca_off_is_the_projection_baseline() -> None:
    config = load_config("tiny-test")
    baseline = encoders.create_model(config.replace(head=dataclasses.replace(config.head, use_vir=False, use_lca=False)))
    baseline.eval()
    assert baseline.instruction is None and baseline.vir is None and baseline.lca is None
    pixels = _pixels(2)
    with torch.inference_mode():
        tokens = baseline.forward_image_tokens(pixels)
        expected_image = torch.nn.functional.normalize(baseline.vision_proj(tokens.global_token), dim=-1)
        text = baseline.forward_text_tokens(CAPTIONS)
        expected_text = torch.nn.functional.normalize(baseline.text_proj(text.hidden[:, 0]), dim=-1)
        torch.testing.assert_close(baseline.encode_image(pixels), expected_image)
        torch.testing.assert_close(baseline.encode_text(CAPTIONS), expected_text)


def test_instruction_encoder_stays_frozen_in_training(model: encoders.PIRModel) -> None:
    model.train()
    try:
        assert model.instruction is not None and not model.instruction.training
        assert not any(p.requires_grad for p in model.instruction.parameters())
        assert model.vir is not None and model.vir.training
        assert model.instruction.classifier_parameters()[0].shape == (30, model.instruction.pooled_width)
        assert model.instruction.logits(_pixels(2)).shape == (2, 30)
    finally:
        model.eval()


def test_shared_instruction_backbone_reuses_the_vision_pass() -> None:
    config = load_config("tiny-test")
    shared = config.replace(instruction=dataclasses.replace(config.instruction, share_vision_backbone=True, feature="logits"))
    model = encoders.create_model(shared).eval()
    assert model.instruction is not None and model.instruction.backbone is None
    with torch.inference_mode():
        tokens = model.forward_image_tokens(_pixels(2))
    assert tokens.instruction_feature is not None and tokens.instruction_feature.shape == (2, 30)
    torch.testing.assert_close(tokens.instruction_feature, model.instruction.classifier(tokens.global_token))


def test_bad_pixels_and_text_are_config_errors(model: encoders.PIRModel) -> None:
    with pytest.raises(ConfigError, match="96x96"):
        model.encode_image(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="list of strings"):
        model.encode_text("a single string")


def test_vir_attention_capture_shapes(model: encoders.PIRModel) -> None:
    result = model.vision_attention(_pixels(2), layer=0)
    heads, r_k = model.config.head.heads, model.config.head.r_k
    head_dim = model.config.embed_dim // heads
    assert result.source == "vir" and result.query.shape == (2, heads, r_k, head_dim)
    assert result.key.shape == result.value.shape == (2, heads, r_k, head_dim)
    assert result.attention.shape == result.last_attention.shape == (2, heads, r_k, r_k)
    torch.testing.assert_close(result.attention.sum(dim=-1), torch.ones(2, heads, r_k))
    assert result.token_indices is not None and result.token_indices.shape == (2, r_k)
    with pytest.raises(ConfigError, match="out of range"):
        model.vision_attention(_pixels(1), layer=5)


def test_text_attention_respects_padding(model: encoders.PIRModel) -> None:
    result = model.text_attention(CAPTIONS, cycle=0)
    assert result.key_mask is not None
    padded = ~result.key_mask[0]
    assert padded.any() and result.attention[0][..., padded].abs().max() == 0


def test_vit_backbone_attention_matches_recomputed_softmax() -> None:
    config = load_config("tiny-test")
    config = config.replace(vision=dataclasses.replace(config.vision, timm_name="test_vit", token_grid=6))
    model = encoders.create_model(config).eval()
    result = model.vision_attention(_pixels(2), layer=0)
    assert result.source == "backbone" and result.query.shape[2] == 37  # class token + 6x6 patches
    scale = result.query.shape[-1] ** -0.5
    recomputed = (result.query * scale @ result.key.transpose(-2, -1)).softmax(dim=-1)
    torch.testing.assert_close(recomputed, result.attention)


def test_mean_pooled_text_ignores_padding_and_differs_from_cls() -> None:
    """``text.pooling = "mean"`` (the offline MiniLM default) averages real tokens only."""
    torch.manual_seed(0)
    config = load_config("tiny-test")
    mean_model = with_trained_looking_heads(
        encoders.create_model(config.replace(text=dataclasses.replace(config.text, pooling="mean")))).eval()
    with torch.inference_mode():
        alone = mean_model.encode_text([CAPTIONS[0]])
        padded = mean_model.encode_text(CAPTIONS)
        batch = mean_model.tokenize([CAPTIONS[0]])
        hidden = mean_model.forward_text_tokens(batch).hidden
        mean_model.lca = None  # compare the global token alone against a hand-computed masked mean
        expected = torch.nn.functional.normalize(mean_model.text_proj(hidden).mean(dim=1), dim=-1)
        got = mean_model.encode_text_from_tokens(hidden, batch.attention_mask)
    assert (alone[0] - padded[0]).abs().max() < 1e-5
    torch.testing.assert_close(got, expected)


def test_unknown_text_pooling_is_a_config_error() -> None:
    config = load_config("tiny-test")
    with pytest.raises(ConfigError, match="text.pooling"):
        dataclasses.replace(config.text, pooling="max").validate()
