"""The typed training configuration (what `engine train` flags map onto), saved next to every checkpoint.

Why a dataclass and not the flags themselves: resume must check that the run it continues used the same
settings, and the model card must state them; both read ``train_config.json`` written from this class.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.devices import DEVICES
from engine.errors import ConfigError

AFFILIATIONS = ("prototype", "pir")  # training.losses.AFFILIATION_KINDS
REPEATED_CAPTIONS = ("keep", "once")  # training.pairs.without_repeated_captions
# Augmented views cached per training image: identity, horizontal flip, vertical flip, 90° rotation.
DEFAULT_CACHED_VIEWS = 4


@dataclass
class TrainConfig:
    """Everything that decides a retrieval-training run (PIR paper values are the defaults)."""

    model: str = "offline-default"  # named model config or path to a model config JSON
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 6e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_fraction: float = 0.1
    grad_clip_norm: float = 1.0
    seed: int = 42
    use_vir: bool = True
    use_lca: bool = True
    use_affiliation: bool = True
    lca_readout: str | None = None  # LCA's readout ("first" | "mean"); None = the model config's head.lca_readout
    affiliation_weight: float = 1.0
    affiliation: str = "prototype"  # "pir": PIR's formula; "prototype": normalised class prototypes (training/losses.py)
    same_caption_positives: bool = False  # identical captions of other images are positives, not negatives
    repeated_captions: str = "keep"  # "once": an image's repeated identical captions give one training pair
    hard_negative_beta: float = 0.0  # > 0: negatives weighted by exp(β·cosine) in InfoNCE (HN-NCE)
    # PAR training (encoders/par.py): reinforce VIR's last self-attention towards the top positions it shares
    # with a same-class reference of the batch, when both cosines pass their gates
    par: bool = False
    par_ccs: float = 0.7
    par_ascs: float = 0.7
    par_top: float = 0.2
    par_strength: float = 1.0
    # background masks on the *training* images (the background-bias study's training with masks): "hard" sets
    # background pixels to 0, "soft" multiplies them by train_mask_sigma; foreground = the PNGs in train_masks
    # (`engine index masks`). Val and test images stay unmasked, so the epoch is chosen on ordinary images.
    train_mask: str = "none"
    train_mask_sigma: float | None = None
    train_masks: str | None = None
    freeze_backbones: bool = True
    unfreeze_last: int = 0  # backbone blocks trained at the end of each backbone (0 = fully frozen)
    backbone_lr_scale: float = 1.0  # learning rate of trained backbone weights = learning_rate x this
    feature_cache: str | None = None  # folder for cached frozen-backbone outputs; None = run backbones each step
    cached_views: int = DEFAULT_CACHED_VIEWS
    augment: bool = True  # random view (cached) or random flips/rotations (live) per training pair
    device: str = "auto"
    amp: bool = True  # autocast (bf16 if supported, else fp16 + GradScaler) on CUDA; ignored on CPU
    num_workers: int = 0
    eval_batch_size: int = 64
    instruction_weights: str | None = None  # trained instruction-encoder weights (train-instruction output)
    # start from a trained model (a checkpoint folder or a shipped name: default, ucm-v1) instead of the pretrained
    # backbones + fresh heads: its heads, trained tails and instruction classifier are loaded; the optimiser, the
    # learning-rate schedule and the loss temperatures start fresh (fine-tuning, or a longer schedule in two runs)
    init_from: str | None = None
    recall_ks: tuple[int, ...] = field(default=(1, 5, 10))
    mix: dict | None = None  # several datasets (training.mix.MixSpec.to_dict()); None = the one DATA dataset

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.recall_ks = tuple(self.recall_ks)
        self.validate()

    def validate(self) -> None:
        """One clear line per wrong value, naming the field."""
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (contrastive learning needs negatives)"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two values in [0, 1)"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.grad_clip_norm > 0, "grad_clip_norm must be > 0"),
            (self.affiliation_weight >= 0, "affiliation_weight (--lambda-aff) must be >= 0"),
            (self.affiliation in AFFILIATIONS,
             f"affiliation (--affiliation) must be one of {', '.join(AFFILIATIONS)}, got {self.affiliation!r}"),
            (self.lca_readout in (None, "first", "mean"),
             f"lca_readout (--lca-readout) must be first or mean, got {self.lca_readout!r}"),
            (not (self.par and not self.use_vir), "--par reinforces VIR's attention: drop --no-vir or --par"),
            (0 < self.par_top <= 1, f"par_top (--par-top) must be within (0, 1], got {self.par_top}"),
            (-1 <= self.par_ccs <= 1 and -1 <= self.par_ascs <= 1,
             "par_ccs / par_ascs (--par-ccs / --par-ascs) must be cosines in [-1, 1]"),
            (self.par_strength >= 0, "par_strength (--par-strength) must be >= 0"),
            (self.train_mask in ("none", "hard", "soft"),
             f"train_mask (--train-mask) must be none, hard or soft, got {self.train_mask!r}"),
            (self.train_mask == "none" or self.train_masks is not None,
             "--train-mask needs --train-masks, a folder of foreground PNGs (engine index masks)"),
            (self.train_mask != "soft" or (self.train_mask_sigma is not None and 0 < self.train_mask_sigma < 1),
             "--train-mask soft needs --train-mask-sigma strictly between 0 and 1"),
            (self.hard_negative_beta >= 0, "hard_negative_beta (--hard-negatives) must be >= 0"),
            (self.repeated_captions in REPEATED_CAPTIONS,
             f"repeated_captions (--repeated-captions) must be one of {', '.join(REPEATED_CAPTIONS)}, "
             f"got {self.repeated_captions!r}"),
            (self.unfreeze_last >= 0, "unfreeze_last must be >= 0"),
            (self.cached_views >= 1, "cached_views must be >= 1"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.backbone_lr_scale > 0, "backbone_lr_scale must be > 0"),
            (not (self.init_from and self.instruction_weights),
             "--init-from loads the instruction classifier of the model it starts from: drop --instruction-weights"),
            (not (self.feature_cache and not self.freeze_backbones),
             "--feature-cache needs frozen backbones (--unfreeze-last N trains their last blocks from the "
             "cached trunk): drop --train-backbones or the cache"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"training config: {message}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "train_config.json") -> "TrainConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON ({error.msg} at line {error.lineno})") from None
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown training fields {unknown}; expected some of {sorted(known)}")
        return cls(**raw)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        if not path.is_file():
            raise ConfigError(f"{path}: training config not found")
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))

    # fields that must match between a checkpoint and the run that resumes it
    RESUME_FIXED = ("model", "use_vir", "use_lca", "lca_readout", "use_affiliation", "affiliation", "batch_size",
                    "seed", "cached_views", "train_mask", "train_mask_sigma", "train_masks",
                    "freeze_backbones", "unfreeze_last", "mix", "repeated_captions", "init_from")

    def resume_mismatches(self, saved: "TrainConfig") -> list[str]:
        return [f"{name}: checkpoint {getattr(saved, name)!r} vs now {getattr(self, name)!r}"
                for name in self.RESUME_FIXED if getattr(saved, name) != getattr(self, name)]
