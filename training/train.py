"""`engine train`: PIR retrieval training with val-based model selection, resume, AMP and optional DDP.

The loop is one code path for every ablation: --no-vir / --no-lca switch model heads off in the model config,
--no-affiliation drops the affiliation term, so the contrastive-only baseline is the same code as full PIR.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from encoders.par import ParSettings, pair_references
from engine.atomic import write_text_atomic
from engine.data.model import Dataset
from engine.devices import resolve_device
from engine.errors import EngineError
from training import distributed, model_ops
from training.train_config import TrainConfig
from training.data_setup import prepare_data
from training.evaluate import evaluate_cached, evaluate_files
from training.loaders import TrainingData
from training.losses import PIRLoss
from training.mix import Mix
from training.optim import build_optimizer
from training.progress import EpochProgress
from training.schedule import build_scheduler
from training.seeding import capture_rng_state, restore_rng_state, seed_everything
from training.state import (BEST_DIR, CONFIG_FILE, HISTORY_FILE, LAST_DIR, METRICS_FILE, RunState, load_trainer,
                            replace_folder, save_trainer)

SELECTION_METRIC = "mR"
MIX_FILE = "mix.json"  # a mixed run's datasets, class table and notes


class TrainingDiverged(EngineError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class TrainStep(nn.Module):
    """Model + loss in one module, so DDP synchronises the temperatures' gradients with the heads'."""

    def __init__(self, model: nn.Module, criterion: PIRLoss, cached: bool, tail: int = 0,
                 par: ParSettings | None = None) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.cached = cached
        self.tail = tail  # cached trunk outputs: the trainable tail blocks run in the step
        self.par = par  # PAR training: VIR's last self-attention is reinforced (encoders/par.py)

    def forward(self, batch: dict):
        with self._reinforcing(batch):
            if self.cached:
                image_emb = model_ops.embed_images(self.model, batch["image_inputs"], self.tail)
            else:
                image_emb = model_ops.embed_images(self.model, model_ops.image_inputs(self.model, batch["pixels"]))
        if self.cached:
            text_emb = model_ops.embed_texts(self.model, batch["text_inputs"], self.tail)
        else:
            text_emb = model_ops.embed_texts(self.model, model_ops.text_inputs(self.model, batch["texts"]))
        return self.criterion(image_emb, text_emb, batch["image_ids"], batch["class_ids"], batch["caption_groups"])

    def _reinforcing(self, batch: dict):
        if self.par is None or self.model.vir is None:
            return contextlib.nullcontext()
        return self.model.vir.reinforcing(pair_references(batch["class_ids"], batch["image_ids"]), self.par)


@dataclass
class TrainResult:
    out: Path
    state: RunState
    best_metrics: dict[str, float]


def _autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(dataset: Dataset | Mix, config: TrainConfig, out: Path, resume: Path | None = None,
          show_progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train, evaluate on val after every epoch, keep ``out/best`` (by val mR) and ``out/last``.

    ``stop_after`` ends the process after that many epochs as an interruption would (schedule unchanged).
    ``dataset`` is one dataset, or a mix of several (``training.mix.load_mix``): val comes from the mix's primary.
    """
    device = resolve_device(config.device)
    info = distributed.init_from_environment(device.type)
    if info.enabled and device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    seed_everything(config.seed)
    model = model_ops.build_model(config).to(device)
    start_trained_on: list[dict] = []
    if config.init_from is not None:  # a resumed run reloads its own last/ right after: still the start's record
        start_trained_on = model_ops.init_from(model, config.init_from)
    if resume is not None:
        model_ops.load_weights(model, resume / LAST_DIR if (resume / LAST_DIR).is_dir() else resume)
    data = prepare_data(dataset, config, model, device, info)
    criterion = PIRLoss(config.use_affiliation, config.affiliation_weight,
                        same_caption_positives=config.same_caption_positives,
                        hard_negative_beta=config.hard_negative_beta, affiliation_kind=config.affiliation)
    par = ParSettings(config.par_ccs, config.par_ascs, config.par_top, config.par_strength) if config.par else None
    step_module = TrainStep(model, criterion, cached=data.cached,
                            tail=config.unfreeze_last if data.cached else 0, par=par).to(device)
    optimizer = build_optimizer(step_module, config, backbones=[model.vision, model.text])
    steps_per_epoch = len(data.train_loader)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.epochs, config.warmup_fraction)
    autocast_dtype = _autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    run = RunState()
    if resume is not None:
        run = _restore(resume, config, criterion, optimizer, scheduler, scaler)
    wrapped: nn.Module = step_module
    if info.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / CONFIG_FILE, config.to_json())
        if isinstance(dataset, Mix):
            write_text_atomic(out / MIX_FILE, json.dumps(dataset.describe(), indent=2))
    trained_on = model_ops.merged_provenance(start_trained_on, dataset.trained_on() if isinstance(dataset, Mix) else [
        {**dataset.identity(), "trained_images": len(dataset.split("train").images), "part": "train split"}])
    best_metrics: dict[str, float] = {}
    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    for epoch in range(run.epoch, last_epoch):
        data.set_epoch(epoch)
        wrapped.train()
        model_ops.keep_frozen_in_eval(model, config)
        started = time.perf_counter()
        losses: list[float] = []
        par_counts = [0, 0]  # samples with a reference, of them gated
        with EpochProgress(epoch, config.epochs, steps_per_epoch, enabled=show_progress and info.is_main) as bar:
            for batch in data.train_loader:
                batch = _to_device(batch, device)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    parts = wrapped(batch)
                if distributed.any_rank(not torch.isfinite(parts.total).item(), device):
                    raise TrainingDiverged(
                        f"loss became {parts.total.item()} at epoch {epoch + 1}, step {run.global_step + 1}; "
                        f"stopped. The last good checkpoint is {out / LAST_DIR} (epoch {run.epoch}); "
                        "try a lower learning rate or --amp off")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts.total).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(step_module.parameters(), config.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                run.global_step += 1
                losses.append(parts.total.item())
                if par is not None and model.vir.last_par_stats is not None:
                    par_counts[0] += model.vir.last_par_stats.paired
                    par_counts[1] += model.vir.last_par_stats.gated
                bar.advance(batch["image_ids"].shape[0] * info.world_size, parts.as_floats())
        seconds = time.perf_counter() - started
        metrics = _validate(model, data, config, device)
        run.epoch = epoch + 1
        run.history.append({"epoch": run.epoch, "loss": sum(losses) / len(losses), "seconds": round(seconds, 2),
                            "temperature": criterion.contrastive_temperature.value(), "val": metrics})
        if par is not None:  # how often PAR's gates let a (sample, reference) pair reinforce, this epoch
            run.history[-1]["par"] = {"paired": par_counts[0], "gated": par_counts[1]}
        improved = metrics[SELECTION_METRIC] > run.best_score
        if improved:
            run.best_score, run.best_epoch = metrics[SELECTION_METRIC], run.epoch
            best_metrics = metrics
        if info.is_main:
            _save_epoch(out, model, config, run, improved, metrics, criterion, optimizer, scheduler, scaler,
                        trained_on)
            EpochProgress.report(run.history[-1], improved)
        distributed.barrier()
    if not best_metrics and run.history:
        best_metrics = next(h["val"] for h in run.history if h["epoch"] == run.best_epoch)
    return TrainResult(out, run, best_metrics)


def _to_device(batch: dict, device: torch.device) -> dict:
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            moved[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        else:
            moved[key] = value
    return moved


def _validate(model, data: TrainingData, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Recalls on every val split; with several (a mix), each key is their mean and ``<name>:<key>`` each one's."""
    scored = []
    for val in data.val_sets:
        if data.cached:
            metrics = evaluate_cached(model, val.pairs, val.features, config.eval_batch_size, device,
                                      config.recall_ks, tail=config.unfreeze_last)
        else:
            metrics = evaluate_files(model, val.pairs, config.eval_batch_size, device, config.recall_ks)
        scored.append((val.name, metrics))
    if len(scored) == 1:
        return scored[0][1]
    combined = {key: sum(metrics[key] for _, metrics in scored) / len(scored) for key in scored[0][1]}
    for name, metrics in scored:
        combined.update({f"{name}:{key}": value for key, value in metrics.items()})
    return combined


def _trainer_state(criterion, optimizer, scheduler, scaler) -> dict:
    return {"criterion": criterion.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": capture_rng_state()}


def _save_epoch(out: Path, model, config: TrainConfig, run: RunState, improved: bool, metrics: dict, criterion, optimizer, scheduler,
                scaler, trained_on: list[dict]) -> None:
    if improved:
        def fill_best(folder: Path) -> None:
            model_ops.save_model(model, folder, config, trained_on)
            (folder / METRICS_FILE).write_text(
                json.dumps({"epoch": run.epoch, "split": "val", **metrics}, indent=2))
        replace_folder(out / BEST_DIR, fill_best)

    def fill_last(folder: Path) -> None:
        model_ops.save_model(model, folder, config, trained_on)
        save_trainer(folder, _trainer_state(criterion, optimizer, scheduler, scaler), run)
    replace_folder(out / LAST_DIR, fill_last)
    write_text_atomic(out / HISTORY_FILE, json.dumps(run.history, indent=2))


def _restore(resume: Path, config: TrainConfig, criterion, optimizer, scheduler, scaler) -> RunState:
    folder = resume / LAST_DIR if (resume / LAST_DIR).is_dir() else resume
    saved_config_path = folder.parent / CONFIG_FILE
    if saved_config_path.is_file():
        mismatches = config.resume_mismatches(TrainConfig.load(saved_config_path))
        if mismatches:
            raise EngineError(f"--resume {resume}: the checkpoint was trained with other settings ("
                              + "; ".join(mismatches) + ")")
    trainer_state, run = load_trainer(folder)
    criterion.load_state_dict(trainer_state["criterion"])
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    scaler.load_state_dict(trainer_state["scaler"])
    restore_rng_state(trainer_state["rng"])
    if run.epoch >= config.epochs:
        raise EngineError(f"--resume {resume}: the run already finished {run.epoch} epochs; "
                          f"raise --epochs above {run.epoch} to train further")
    return run
