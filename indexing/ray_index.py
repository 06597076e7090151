"""``engine index DIR --out INDEX --ray [auto|ADDRESS]``: the encode stage of a build, spread over a Ray cluster.

Everything before and after encoding is the single-process build (``indexing.build.run_index``): the same
plan file fixes every image's shard and int64 id, the same shard-completion rule makes a killed job resumable,
and ``faiss.index`` is built from the shards on the driver afterwards (IVF: quantiser trained on a sample, then
filled shard by shard). Only the pending shards' images travel through Ray:

    plan rows ──Ray Data──> decode (CPU tasks: ``encode.decode_planned``)
              ──Ray Data──> image encode (actor pool, one model per actor, 1 GPU each when the cluster has
                            GPUs: ``encode.encode_decoded``)
              ──driver────> ``ShardAssembler`` (rows of a shard, put back in plan order)
              ──actors────> shard writers (caption encoding + atomic Parquet writes: ``encode_loop.write_shard``)

Same functions as the single-process path, so the shards hold the same rows and ids and embeddings equal to
float rounding (tests/test_ray_index.py). Failure handling: Ray Data restarts a dead encoder actor and retries
its batches; the assembler ignores a position that comes back twice; a shard is handed to a writer once, and a
writer retried after a crash finds the image shard already in place and does not write it again. If the
driver itself dies, rerunning the command skips the completed shards, as without Ray.

Workers read the images and write the index folder themselves: on a multi-node cluster DATA_DIR, INDEX_DIR
and a ``--model`` checkpoint folder must be on a filesystem every node mounts at the same path, and every
node needs this package installed (each actor checks that it loaded the driver's model, by fingerprint).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, EngineError

INSTALL_HINT = "pip install -e \".[ray]\" (or pip install \"ray[data]\")"
PROBE_TIMEOUT_S = 3.0
DECODE_BATCH = 16  # images per decode task call
DECODE_CPUS = 0.5  # logical CPUs per decode task (reading and resizing a tile is light next to encoding it)
CPU_THREADS_PER_ACTOR_MIN = 1
WRITES_IN_FLIGHT_PER_WRITER = 2
WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM")
# Tests only: {"marker": path, "after_batches": n} makes the first encoder actor that finds no marker file
# create it and die (os._exit) after n batches, mid-shard, so the restart-and-retry path is exercised for real.
FAULT: dict | None = None


@dataclass(frozen=True)
class RayPlan:
    """How the cluster is used: encoder actors, their GPU share and torch threads, and shard writers."""

    actors: int
    gpus_per_actor: float
    threads: int
    writers: int

    def describe(self) -> str:
        device = f"{self.gpus_per_actor:g} GPU each" if self.gpus_per_actor else f"CPU, {self.threads} threads each"
        return f"{self.actors} encoder actor(s) ({device}), {self.writers} shard writer(s)"


def require_ray() -> None:
    """One line saying how to install Ray when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"--ray: Ray is not installed; install it with {INSTALL_HINT}") from None


def probe_address(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when nothing listens at ``host:port``; ``auto`` passes."""
    if address == "auto":
        return
    if Path(address).exists():
        raise ConfigError(f"--ray {address}: that is a path, not a cluster address; write `--ray auto` (or put "
                          "--ray after DATA_DIR) to use a local cluster")
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray {address}: expected auto or a cluster address HOST:PORT (e.g. 10.0.0.5:6379 "
                          "from `ray start --head`, or ray://HOST:10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        raise ConfigError(f"--ray {address}: cannot reach a Ray cluster there ({error.strerror or error}); start "
                          "one with `ray start --head` or pass the address it prints") from None


def connect(address: str) -> bool:
    """Join the cluster (``auto``: the running local one, else a new local one); True when this call started the
    connection (the caller shuts it down), False when the process was already connected (e.g. a test's)."""
    import ray

    probe_address(address)
    if ray.is_initialized():
        return False
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    # Ray's C++ core logs notes meant for Ray developers at ERROR level (e.g. about actor constructor arguments
    # in the object store); real failures still reach us as Python exceptions.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        ray.init(address=None if address == "auto" else address, runtime_env={"env_vars": env} if env else None,
                 logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"--ray {address}: could not join the Ray cluster ({str(error).splitlines()[0]})") from None
    return True


def plan_resources(requested: int | None, device: str) -> RayPlan:
    """Encoder actors: ``--ray-workers`` or one per GPU, else one per 4 CPUs (at least 1); CPU actors get the
    node's cores divided among the actors placed there as torch threads; one shard writer per actor."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    cpus = max(1, int(resources.get("CPU", 1)))
    nodes = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    if requested is not None and requested <= 0:
        raise ConfigError(f"--ray-workers must be positive, got {requested}")
    if device == "cuda" and gpus == 0:
        raise ConfigError("--device cuda --ray: the Ray cluster has no GPUs")
    actors = requested or (gpus if gpus else max(1, cpus // 4))
    threads = max(CPU_THREADS_PER_ACTOR_MIN, (cpus // nodes) // math.ceil(actors / nodes))
    return RayPlan(actors=actors, gpus_per_actor=1.0 if gpus else 0.0, threads=threads, writers=actors)


def _load_checked(spec: str | None, views: int, fingerprint: str, device: str, threads: int) -> Any:
    """The driver's model, loaded in a worker; refuses a different one (another checkpoint on this node)."""
    from engine.torch_shim import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torch

    from indexing.encode import load_encoder

    if device == "cpu":
        torch.set_num_threads(threads)
    model = load_encoder(spec, torch.device(device))
    model.set_test_time_views(views)
    if model.fingerprint() != fingerprint:
        raise ConfigError(f"Ray worker on {socket.gethostname()}: --model {spec or 'default'} loads model "
                          f"{model.fingerprint()[:16]} there, the driver has {fingerprint[:16]}; every node "
                          "needs the same checkpoint")
    return model


_TRANSFORMS: dict[int, Any] = {}  # per worker process: unpickled transforms by hash of their bytes


def _transform_from(pickled: bytes) -> Any:
    """Unpickle the model's image transform after the torchvision shim (timm transforms import torchvision)."""
    key = hash(pickled)
    if key not in _TRANSFORMS:
        from engine.torch_shim import ensure_torchvision_importable

        ensure_torchvision_importable()
        import cloudpickle

        _TRANSFORMS[key] = cloudpickle.loads(pickled)
    return _TRANSFORMS[key]


def decode_batch(batch: dict[str, np.ndarray], transform: bytes, mask, blank_shape: tuple[int, ...]) -> dict:
    """Ray Data CPU task: ``decode_planned`` on every row; pixels come back as one float32 array."""
    transform = _transform_from(transform)
    import torch

    from indexing.encode import PlannedImage, decode_planned

    masks_dir = Path(mask.masks_dir) if mask.masks_dir else None
    blank = torch.zeros(blank_shape)
    from engine.data.geo_scenes import ChipSpec

    chips = batch["chip"] if "chip" in batch else [""] * len(batch["path"])
    items = [decode_planned(PlannedImage(-1, -1, Path(path), "", None, None, ChipSpec.from_json(chip) if chip else None),
                            transform, mask, masks_dir, blank)
             for path, chip in zip(batch["path"], chips)]
    return {"position": batch["position"],
            "pixels": np.stack([item["pixels"].numpy() for item in items]).astype(np.float32, copy=False),
            **{key: np.array([item[key] for item in items]) for key in
               ("ok", "width", "height", "error", "mask_resized", "decode_seconds")}}


class ImageEncoder:
    """Ray Data actor: one model, ``encode.encode_decoded`` per batch (pixels are not sent back)."""

    def __init__(self, spec: str | None, views: int, fingerprint: str, threads: int, runtime: str,
                 fault: dict | None) -> None:
        import ray

        from indexing.encode import image_encoder

        gpu = bool(ray.get_gpu_ids())
        self.device = "cuda" if gpu else "cpu"
        self.model = _load_checked(spec, views, fingerprint, self.device, threads)
        self.encoder = image_encoder(self.model, runtime if not gpu else "eager", threads)
        self.fault, self.batches = fault, 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from indexing.encode import encode_decoded

        self._maybe_die()
        started = time.perf_counter()
        vectors = encode_decoded(self.encoder, torch.from_numpy(np.ascontiguousarray(batch["pixels"])),
                                 [bool(value) for value in batch["ok"]], torch.device(self.device))
        seconds = time.perf_counter() - started
        result = {key: value for key, value in batch.items() if key != "pixels"}
        result["vector"] = vectors
        result["encode_seconds"] = np.full(len(vectors), seconds / max(1, len(vectors)))
        result["runtime"] = np.array([self.encoder.describe()] * len(vectors))
        return result

    def _maybe_die(self) -> None:
        if self.fault is None:
            return
        self.batches += 1
        marker = Path(self.fault["marker"])
        if self.batches > int(self.fault["after_batches"]) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # a hard crash: no exception, no cleanup, as an OOM kill or a lost node would look


class ShardWriter:
    """Ray actor: caption encoding and the atomic Parquet writes of whole shards (``encode_loop.write_shard``)."""

    def __init__(self, spec: str | None, views: int, fingerprint: str, threads: int, manifest, out: str,
                 data_root: str, batch_size: int, text_runtime: str = "eager") -> None:
        from indexing.encode import text_encoder_for

        self.model = _load_checked(spec, views, fingerprint, "cpu", threads)
        self.text_encoder = text_encoder_for(self.model, text_runtime if manifest.with_text else "eager", threads)
        self.manifest, self.out, self.data_root, self.batch_size = manifest, Path(out), data_root, batch_size

    def write(self, shard_index: int, rows, captions_of: dict,
              skipped: list[dict] | None = None) -> tuple[int, dict[str, float], bool]:
        """(captions written, seconds per stage, whether this call wrote the shard)."""
        import pyarrow.parquet as pq

        from indexing.encode_loop import write_shard
        from indexing.layout import SHARDS_DIR, TEXT_SHARDS_DIR, shard_name
        from indexing.stages import StageTimes

        if (self.out / SHARDS_DIR / shard_name(shard_index)).exists():  # a retry of a call that finished
            text = self.out / TEXT_SHARDS_DIR / shard_name(shard_index)
            return (pq.ParquetFile(text).metadata.num_rows if text.exists() else 0), {}, False
        times = StageTimes()
        count = write_shard(self.model, rows, captions_of, self.manifest, self.out, shard_index, self.data_root,
                            self.batch_size, times, self.text_encoder, skipped)
        return count, times.seconds, True


_ENGINE_ERROR_LINE = re.compile(r"\b(ConfigError|DataError|EngineError): (.+)")


def _worker_error(error: Exception) -> EngineError:
    """A one-line error from whatever a worker raised (our own EngineErrors keep their message)."""
    cause = getattr(error, "cause", None)
    while cause is not None and not isinstance(cause, EngineError) and getattr(cause, "cause", None) is not None:
        cause = cause.cause
    if isinstance(cause, EngineError):
        return type(cause)(str(cause))
    found = _ENGINE_ERROR_LINE.search(str(error))
    if found:  # raised in an actor's constructor: Ray passes it on as text
        return EngineError(found.group(2).strip())
    if cause is not None:  # the worker's own exception: its type and first line say what went wrong
        first = next((line for line in str(cause).splitlines() if line.strip()), "")
        return EngineError(f"--ray: a worker failed: {type(cause).__name__}: {first.strip()}")
    first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return EngineError(f"--ray: a worker failed: {first.strip()}")


def encode_segment_ray(model: Any, dataset, plan, pending: list[int], manifest, out: Path, options, summary,
                       runtime: str = "eager", text_runtime: str = "eager") -> None:
    """Encode and write every pending shard of ``plan`` on the Ray cluster named by ``options.ray``; each encoder
    actor builds the image ``runtime`` (``indexing.encode.image_encoder``) itself."""
    import ray

    from indexing.encode_loop import ShardAssembler, _progress, captions_by_image, console_log

    captions_of = captions_by_image(dataset)
    writes: dict[Any, tuple[int, int]] = {}  # future -> (shard index, image rows)

    def collect(ready: list) -> None:
        for future in ready:
            _, rows = writes.pop(future)
            captions, seconds, _ = ray.get(future)
            summary.captions_encoded += captions
            summary.encoded += rows
            summary.shards_written += 1
            summary.stages.merge(seconds)

    def write(shard_index: int, rows, skipped: list[dict]) -> None:
        subset = {source: captions_of[source] for source in rows.source_id if source in captions_of}
        writer = writers[shard_index % len(writers)]
        writes[writer.write.remote(shard_index, rows, subset, skipped)] = (shard_index, len(rows))
        while len(writes) > WRITES_IN_FLIGHT_PER_WRITER * len(writers):
            with summary.stages.timed("writer wait"):  # back-pressure: the writers are behind
                done, _ = ray.wait(list(writes), num_returns=1)
            collect(done)

    assembler = ShardAssembler(plan, pending, manifest.shard_size, captions_of, write, summary)
    if not assembler.queue:
        return
    owned = connect(options.ray)
    if manifest.with_text:
        summary.text_runtime = f"{text_runtime} (in each shard writer; eager where it is not faithful)"
    try:
        layout = plan_resources(options.ray_workers, options.device)
        views, fingerprint = model.config.vision.test_time_views, model.fingerprint()
        writer_class = ray.remote(ShardWriter).options(num_cpus=0, max_restarts=2, max_task_retries=2)
        writers = [writer_class.remote(options.model_spec, views, fingerprint, layout.threads, manifest, str(out),
                                       plan.segment.data_root, options.batch_size, text_runtime)
                   for _ in range(layout.writers)]
        try:  # the writers load their models while the pipeline starts; a wrong model fails at the first write
            dataset_rows = _pipeline(model, assembler, manifest, options, layout, views, fingerprint, runtime)
            with _progress() as progress:
                assembler.log = console_log(progress.console)
                task = progress.add_task("encoding", total=len(assembler.queue))
                for batch in dataset_rows.iter_batches(batch_size=None, batch_format="numpy"):
                    waited, started = summary.stages.seconds.get("writer wait", 0.0), time.perf_counter()
                    _deliver(batch, assembler, summary)  # may submit shards to the writers (and wait for them)
                    waited = summary.stages.seconds.get("writer wait", 0.0) - waited
                    summary.stages.add("assemble", time.perf_counter() - started - waited)  # the driver's own work
                    progress.advance(task, len(batch["position"]))
                    collect(ray.wait(list(writes), num_returns=len(writes), timeout=0)[0] if writes else [])
                collect(list(writes))
        except ray.exceptions.RayError as error:
            raise _worker_error(error) from None
        finally:
            for writer in writers:
                ray.kill(writer)  # not left to reference counting: their models hold memory on a shared cluster
        if not assembler.complete:
            raise EngineError(f"--ray: {len(assembler.blocks) - len(assembler.done)} shard(s) did not come back "
                              "complete; rerun the same command to finish them")
        if assembler.repeated:
            assembler.log(f"note: {assembler.repeated} image(s) came back twice after a worker restart; "
                          "the repeats were ignored")
    finally:
        if owned:
            ray.shutdown()


def _pipeline(model, assembler, manifest, options, layout: RayPlan, views: int, fingerprint: str, runtime: str):
    import cloudpickle
    import ray
    from PIL import Image

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws its own bar
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context.print_on_execution_start = False
    context.verbose_stats_logs = False
    transform = model.image_transform(train=False)
    blank_shape = tuple(transform(Image.new("RGB", (32, 32))).shape)
    items = [{"position": position, "path": str(image.path), "chip": image.chip.to_json() if image.chip else ""}
             for position, image in enumerate(assembler.queue)]
    blocks = max(1, min(len(items) // DECODE_BATCH, 4096))
    rows = ray.data.from_items(items, override_num_blocks=blocks)
    # Other resources than the actors', so Ray Data keeps decoding in tasks instead of fusing it into the actors
    rows = rows.map_batches(decode_batch, batch_size=DECODE_BATCH, num_cpus=DECODE_CPUS,
                            fn_kwargs={"transform": cloudpickle.dumps(transform), "mask": manifest.mask,
                                       "blank_shape": blank_shape})
    return rows.map_batches(ImageEncoder, batch_size=options.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=layout.actors), num_cpus=1, num_gpus=layout.gpus_per_actor or None,
                            fn_constructor_kwargs={"spec": options.model_spec, "views": views,
                                                   "fingerprint": fingerprint, "threads": layout.threads,
                                                   "runtime": runtime, "fault": FAULT})


def _deliver(batch: dict[str, np.ndarray], assembler, summary) -> None:
    from indexing.encode_loop import Decoded

    summary.stages.add("decode", float(np.sum(batch["decode_seconds"])))
    if not summary.image_runtime and len(batch["runtime"]):
        summary.image_runtime = f"{batch['runtime'][0]} (in each encoder actor)"
    summary.stages.add("image encode", float(np.sum(batch["encode_seconds"])))
    for slot in range(len(batch["position"])):
        assembler.add(Decoded(position=int(batch["position"][slot]),
                              vector=np.asarray(batch["vector"][slot], np.float32) if batch["ok"][slot] else None,
                              width=int(batch["width"][slot]), height=int(batch["height"][slot]),
                              error=str(batch["error"][slot]), mask_resized=str(batch["mask_resized"][slot])))
