"""`engine train` and `engine train-instruction`: flags → TrainConfig → the training functions.

Plain functions registered by ``engine/cli.py``; ``python -m training`` (torchrun) reuses ``train_command``.
"""

from __future__ import annotations


from pathlib import Path
from typing import Optional

import typer

from engine.data.image_guard import MAX_PIXELS_HELP
from engine.errors import ConfigError


def train_command(
    data: list[Path] = typer.Argument(..., metavar="DATA...", help="Dataset folder (Karpathy JSON, PIR JSON, ...) with train/val "
                                      "splits; several (caption datasets and <Class>/<image> scene collections) "
                                      "train on their mix; or one mix file (JSON/YAML, docs/training-mix.md)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Sampling weight per DATA, comma-separated "
                                          "(e.g. 1,0.5): each dataset's share of an epoch's pairs."),
    out: Path = typer.Option(Path("runs/pir"), "--out", help="Run folder: best/, last/, history.json."),
    config: str = typer.Option("offline-default", "--config",
                               help="Model config: offline-default, pir-paper, tiny-test or a JSON path."),
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = typer.Option(128, "--batch-size", help="Global batch (split across DDP processes)."),
    lr: float = typer.Option(6e-5, "--lr"),
    seed: int = typer.Option(42, "--seed"),
    no_vir: bool = typer.Option(False, "--no-vir", help="Switch the VIR / Spatial-PAE image head off."),
    no_lca: bool = typer.Option(False, "--no-lca", help="Switch the LCA text head off."),
    lca_readout: Optional[str] = typer.Option(None, "--lca-readout",
                                              help="LCA's text readout: first (position 0, PIR) or mean (masked mean "
                                                   "over the caption); default: the model config's."),
    no_affiliation: bool = typer.Option(False, "--no-affiliation", help="Train with the contrastive loss only."),
    lambda_aff: float = typer.Option(1.0, "--lambda-aff", help="Weight λ of the affiliation loss."),
    affiliation: str = typer.Option("prototype", "--affiliation",
                                    help="prototype (normalised class prototypes, the default) or pir "
                                         "(PIR's formula: raw class means per sample)."),
    same_caption_positives: bool = typer.Option(
        False, "--same-caption-positives/--image-positives-only",
        help="Count a caption that reads like the pair's own (other image) as a positive, not a negative."),
    repeated_captions: str = typer.Option("keep", "--repeated-captions",
                                          help="keep, or once: an image's identical captions train as one pair "
                                               "(RSICD repeats one sentence five times for half its images)."),
    hard_negatives: float = typer.Option(0.0, "--hard-negatives",
                                         help="β of HN-NCE: weight negatives by exp(β·cosine); 0 = plain InfoNCE."),
    par: bool = typer.Option(False, "--par", help="PAR training: reinforce VIR's last self-attention towards the "
                             "top positions shared with a same-class reference in the batch (gated by --par-ccs/--par-ascs)."),
    par_ccs: float = typer.Option(0.7, "--par-ccs", help="--par: gate on the class-token cosine."),
    par_ascs: float = typer.Option(0.7, "--par-ascs", help="--par: gate on the attention-map cosine."),
    par_top: float = typer.Option(0.2, "--par-top", help="--par: share of most-attended positions (TOAI)."),
    par_strength: float = typer.Option(1.0, "--par-strength",
                                       help="--par: attention to TOAI positions is multiplied by 1 + this."),
    train_mask: str = typer.Option("none", "--train-mask", help="Mask the background of training images: none, "
                                   "hard (set to 0) or soft (times --train-mask-sigma); val/test stay unmasked."),
    train_mask_sigma: Optional[float] = typer.Option(None, "--train-mask-sigma", help="--train-mask soft: factor."),
    train_masks: Optional[Path] = typer.Option(None, "--train-masks",
                                               help="Folder of foreground PNGs, one per image (engine index masks)."),
    freeze_backbones: bool = typer.Option(True, "--freeze-backbones/--train-backbones"),
    unfreeze_last: int = typer.Option(0, "--unfreeze-last", help="Train the last N blocks of each backbone "
                                      "(with --feature-cache: from cached trunk outputs)."),
    backbone_lr_scale: float = typer.Option(1.0, "--backbone-lr-scale",
                                            help="Learning rate of trained backbone weights = --lr x this."),
    feature_cache: Optional[Path] = typer.Option(None, "--feature-cache",
                                                 help="Cache frozen backbone outputs here (heads-only epochs)."),
    cached_views: int = typer.Option(4, "--cached-views", help="Augmented views cached per training image."),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="Random flips/rotations (a random cached view) per training pair."),
    instruction_weights: Optional[Path] = typer.Option(None, "--instruction-weights",
                                                       help="Output of `engine train-instruction`."),
    init_from: Optional[str] = typer.Option(None, "--init-from",
                                            help="Start from a trained model (checkpoint folder, or default / "
                                                 "ucm-v1): fine-tune it; optimiser and schedule start fresh."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Run folder (or its last/) to continue."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of a precomp DATA (one DATA; in a "
                                          "mix file, each dataset's 'images')."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help=MAX_PIXELS_HELP),
) -> None:
    """Train the PIR retrieval model; keeps the best checkpoint by val mR."""
    from engine.data import load_dataset
    from engine.data.image_guard import configure

    configure(max_image_pixels)  # exported to the environment: data-loader workers inherit it
    from training.train_config import TrainConfig
    from training.mix import load_mix, mix_from_arguments
    from training.train import train

    spec = mix_from_arguments(list(data), _parse_weights(weights), images)
    train_config = TrainConfig(
        model=config, epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, use_vir=not no_vir,
        use_lca=not no_lca, lca_readout=lca_readout, use_affiliation=not no_affiliation, affiliation_weight=lambda_aff,
        affiliation=affiliation,
        same_caption_positives=same_caption_positives, repeated_captions=repeated_captions,
        hard_negative_beta=hard_negatives,
        train_mask=train_mask, train_mask_sigma=train_mask_sigma,
        train_masks=str(train_masks) if train_masks else None,
        par=par, par_ccs=par_ccs, par_ascs=par_ascs, par_top=par_top, par_strength=par_strength,
        freeze_backbones=freeze_backbones, unfreeze_last=unfreeze_last, backbone_lr_scale=backbone_lr_scale,
        feature_cache=str(feature_cache) if feature_cache else None, cached_views=cached_views, augment=augment,
        device=device, amp=amp, num_workers=workers,
        instruction_weights=str(instruction_weights) if instruction_weights else None, init_from=init_from,
        mix=spec.to_dict() if spec is not None else None)
    if resume is not None and not resume.exists():
        raise ConfigError(f"--resume {resume}: no such run folder")
    if init_from is not None:
        from encoders.checkpoint import model_folder, read_checkpoint_meta

        try:
            start = model_folder(init_from)
        except ConfigError as error:
            raise ConfigError(f"--init-from: {error}") from None
        typer.echo(f"starting from {start} (fingerprint {str(read_checkpoint_meta(start).get('fingerprint'))[:16]})",
                   err=True)
    if spec is None:
        source = load_dataset(data[0], images=images)
        for note in source.notes:
            typer.echo(f"note: {note}", err=True)
    else:
        source = load_mix(spec, use_affiliation=not no_affiliation)
        for line in describe_mix(source):
            typer.echo(line, err=True)
    result = train(source, train_config, out, resume=resume, show_progress=not quiet)
    best = result.best_metrics
    if best:
        typer.echo(f"best val mR {best['mR']:.2f} at epoch {result.state.best_epoch}; checkpoint: {out / 'best'}")


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: expected numbers separated by commas, e.g. 1,0.5") from None
    if any(not value > 0 for value in values):
        raise ConfigError(f"--weights {text!r}: every weight must be > 0")
    return values


def describe_mix(mix) -> list[str]:
    """What a mixed run says before training: each dataset's share of an epoch, the classes, the notes."""
    from training.mix_sampler import allocate, default_epoch_size

    sizes = [len(source.train.captions) for source in mix.sources]
    weights = [source.entry.weight for source in mix.sources]
    epoch = mix.spec.epoch_pairs or default_epoch_size(sizes, weights, mix.primary)
    val = " + ".join(source.name for source in mix.val_sources)
    chooses = "their mean mR chooses the epoch" if len(mix.val_sources) > 1 else "chooses the epoch"
    lines = [f"mix: {len(mix.sources)} datasets, {epoch} training pairs per epoch, "
             f"{len(mix.class_names)} scene classes; val: {val} ({chooses})"]
    for source, size, count in zip(mix.sources, sizes, allocate(epoch, weights)):
        made = " (captions made from class names)" if source.kind == "scenes" else ""
        lines.append(f"  {source.name}: {source.kind}, {len(source.train.images)} training images, {size} pairs"
                     f"{made}; weight {source.entry.weight:g} -> {count} pairs per epoch; "
                     f"{len(source.evaluation)} images held out")
    return lines + [note if note.startswith("warning:") else f"note: {note}" for note in mix.notes]


def train_instruction_command(
    data_dir: Path = typer.Argument(..., help="Scene-class dataset folder (e.g. AID: one folder per class)."),
    out: Path = typer.Option(Path("runs/instruction"), "--out"),
    config: str = typer.Option("offline-default", "--config", help="Model config whose instruction encoder to train."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs of the classifier head on cached features."),
    train_fraction: float = typer.Option(0.8, "--train-fraction", help="Per-class share of images used to train."),
    seed: int = typer.Option(42, "--seed"),
    views: int = typer.Option(4, "--views", help="Augmented views (flips/rotations) cached per training image."),
    unfreeze_last: int = typer.Option(0, "--unfreeze-last",
                                      help="Also train the backbone's last N stages (shared with the vision side)."),
    backbone_lr_scale: float = typer.Option(0.1, "--backbone-lr-scale",
                                            help="Learning rate of those stages, as a multiple of the classifier's."),
    feature_cache: Optional[Path] = typer.Option(None, "--feature-cache",
                                                 help="Folder for the cached trunk maps (--unfreeze-last)."),
    train_backbone: bool = typer.Option(False, "--train-backbone",
                                        help="Fine-tune every weight of the config's own instruction network "
                                             "(PIR's AID-trained instruction; not for a shared backbone)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per step of --train-backbone."),
    learning_rate: float = typer.Option(1e-3, "--lr", help="Learning rate of the classifier (the backbone: "
                                        "x --backbone-lr-scale)."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Train the instruction encoder's scene classifier; reports held-out top-1 and writes its weights."""
    from engine.data import load_dataset
    from training.instruction import InstructionTrainConfig, train_instruction

    settings = InstructionTrainConfig(model=config, epochs=epochs, train_fraction=train_fraction, seed=seed,
                                      views=views, unfreeze_last=unfreeze_last, backbone_lr_scale=backbone_lr_scale,
                                      feature_cache=str(feature_cache) if feature_cache else None,
                                      train_backbone=train_backbone, finetune_batch_size=batch_size,
                                      learning_rate=learning_rate)
    report = train_instruction(load_dataset(data_dir), settings, out, show_progress=not quiet)
    typer.echo(f"held-out top-1 {report.test_top1 * 100:.2f}% on {report.test_images} images "
               f"({report.classes} classes); weights: {report.weights_path}")
    typer.echo(f"use them with: engine train DATA --instruction-weights {report.weights_path}")





def soup_command(
    models: list[str] = typer.Argument(..., metavar="MODEL...", help="Two or more checkpoint folders (or shipped "
                                       "names) of one config, fine-tuned from one start (e.g. the seeds of an "
                                       "--init-from run)."),
    out: Path = typer.Option(..., "--out", help="New checkpoint folder for the averaged model (must not exist)."),
) -> None:
    """Average the weights of models fine-tuned from one start into one model (a uniform model soup); score it on
    val with `engine eval` before using it."""
    from training.soup import soup

    meta = soup(models, out)
    typer.echo(f"soup of {len(models)} models written to {out} (fingerprint {str(meta.get('fingerprint'))[:16]}); "
               "score it on val with `engine eval` before using it")


def query_bank_command(
    model: Path = typer.Argument(..., metavar="MODEL_DIR", help="Checkpoint folder the bank is written into "
                                 "(the shipped default: encoders/weights)."),
    data: list[Path] = typer.Argument(..., metavar="DATA...", help="Caption datasets whose train captions form the "
                                      "bank (the model's own training data)."),
    beta: float = typer.Option(..., "--beta", help="Inverse temperature of the normalisation; choose it on val "
                               "(bench/query_bank.py)."),
    images: Optional[Path] = typer.Option(None, "--images", help="image folder of a precomp DATA (see engine data "
                                          "check)"),
    directions: str = typer.Option("both", "--directions", help="both | t2i (captions only: text→image) | i2t "
                                   "(images only: image→text)"),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes for image decoding"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    test_time_views: int = typer.Option(1, "--test-time-views", help="dihedral views per bank image (1-8)"),
    weighting: str = typer.Option("count", "--weighting", help="count: every training caption and image once (the "
                                  "biggest dataset dominates) | balanced: every DATA the same total weight"),
) -> None:
    """Store the model's query bank: its training captions' and images' embeddings, used to normalise cross-modal
    scores (querybank normalisation; `engine eval`, `engine query` and `engine serve` apply it when present)."""
    from engine import preflight
    from training.query_bank import build_bank

    preflight.check_device(device)
    described = build_bank(model, data, beta, images=images, directions=directions, workers=workers, device=device,
                           image_views=test_time_views, weighting=weighting)
    typer.echo(f"query bank written to {model}: {described['texts']} distinct captions, {described['images']} "
               f"images, beta {described['beta']:g}, weighting {weighting}, digest {described['digest']}")
