"""``engine query`` and ``engine serve``: argument handling only (the work is in QueryEngine and server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from engine.data.image_guard import MAX_PIXELS_HELP
from engine.query.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS
from engine.query.request import DEFAULT_K, DEFAULT_RERANK_DEPTH, RerankOptions
from indexing.filter_guard import DEFAULT_FILTER_BUDGET_S

FILTER_TIMEOUT_HELP = ("Seconds a --where filter may run before it is interrupted and fails with one line "
                       "(0: no limit).")

_DEFAULTS = RerankOptions()


def query_command(
    text: Optional[str] = typer.Argument(None, help="What to look for, e.g. \"airport with runways\"."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder (default: this project's last index, named on stderr)."),
    k: int = typer.Option(DEFAULT_K, "-k", "--k", help="Number of results."),
    image: Optional[Path] = typer.Option(None, "--image", help="Search with an image instead of text."),
    target: str = typer.Option("images", "--target", help="images | captions"),
    where: Optional[str] = typer.Option(None, "--where", help="SQL filter, e.g. \"split = 'test' AND class = 'airport'\"."),
    rerank: str = typer.Option("none", "--rerank", help="none | aas | par-bonus (a query-time score bonus "
                                "from PAR's gates; PAR training is engine train --par)"),
    rerank_depth: int = typer.Option(DEFAULT_RERANK_DEPTH, "--rerank-depth", help="First-stage candidates reranked."),
    layer: int = typer.Option(_DEFAULTS.layer, "--layer", help="Self-attention layer used by the rerankers."),
    prf_references: int = typer.Option(_DEFAULTS.prf_references, "--prf-references",
                                       help="Text queries: top-m first-stage images used as references."),
    aas_weight: float = typer.Option(_DEFAULTS.aas_text_weight, "--aas-weight",
                                     help="Text queries: weight of AAS against the first-stage score."),
    par_ccs: float = typer.Option(_DEFAULTS.par_ccs, "--par-ccs", help="par-bonus gate on the class-token cosine."),
    par_ascs: float = typer.Option(_DEFAULTS.par_ascs, "--par-ascs", help="par-bonus gate on the attention-map cosine."),
    par_top: float = typer.Option(_DEFAULTS.par_top_fraction, "--par-top", help="par-bonus: share of top positions."),
    par_beta: float = typer.Option(_DEFAULTS.par_beta, "--par-beta", help="par-bonus: bonus for a full overlap."),
    no_query_bank: bool = typer.Option(False, "--no-query-bank", help="Rank text queries by the plain cosine even "
                                       "when the model has a query bank (engine query-bank)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write a gallery page to this file."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder (default: the index's)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", hidden=True, help="Old name of --model."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help=MAX_PIXELS_HELP),
    filter_timeout: float = typer.Option(DEFAULT_FILTER_BUDGET_S, "--filter-timeout", help=FILTER_TIMEOUT_HELP),
    bbox: Optional[str] = typer.Option(None, "--bbox", help="Chips of GeoTIFF scenes whose footprint intersects "
                                       "W,S,E,N (WGS84 degrees). See docs/geo.md."),
    near: Optional[str] = typer.Option(None, "--near", help="Chips within --radius-km of LON,LAT (WGS84)."),
    radius_km: Optional[float] = typer.Option(None, "--radius-km", help="Radius of --near in kilometres."),
    geojson_out: Optional[Path] = typer.Option(None, "--geojson", help="Also write the hits' footprints as a "
                                               "GeoJSON FeatureCollection (QGIS, GeoPandas)."),
) -> None:
    """Search an index with text or an image; filters run before the k-NN search."""
    from engine import preflight
    from engine.data.image_guard import configure
    from engine.query.geo_filter import parse_geo_filter
    from engine.query.output import print_json, print_table
    from engine.query.request import QueryRequest, validate_request

    options = RerankOptions(layer=layer, prf_references=prf_references, aas_text_weight=aas_weight, par_ccs=par_ccs,
                            par_ascs=par_ascs, par_top_fraction=par_top, par_beta=par_beta)
    request = QueryRequest(text=text, image_path=str(image) if image is not None else None, k=k, target=target,
                           where=where, rerank=rerank, rerank_depth=rerank_depth, options=options,
                           place=parse_geo_filter(bbox, near, radius_km))
    # everything that can be checked before the (slow) model load answers at once
    validate_request(request)
    configure(max_image_pixels)
    _check_filter_timeout(filter_timeout)
    preflight.check_device(device)
    checkpoint, model_flag = preflight.model_choice(model, checkpoint)
    preflight.check_checkpoint_folder(checkpoint, model_flag)
    if image is not None:
        preflight.check_image_file(image)
    if html_out is not None:
        preflight.check_output_file(html_out, "--html")
    if geojson_out is not None:
        preflight.check_output_file(geojson_out, "--geojson")
    if index is not None:
        _check_index_folder(index)
    from engine.query.api import Index

    with Index(_open_engine(index, checkpoint=checkpoint, device=device, filter_budget_s=filter_timeout,
                             query_bank=not no_query_bank)) as opened:
        result = opened.query(request)  # what ix.search runs, as a QueryResult
    if html_out is not None:
        from engine.query.gallery import write_gallery

        write_gallery(result, html_out)
    if geojson_out is not None:
        from engine.query.geo_json import write_geojson

        if write_geojson(result, geojson_out) < len(result.hits):
            result.notes.append(f"--geojson {geojson_out}: only hits that are chips of GeoTIFF scenes have a "
                                "footprint; the others are left out")
    if as_json:
        print_json(result)
    else:
        print_table(result)


def _check_filter_timeout(seconds: float) -> None:
    from engine.errors import ConfigError

    if not seconds >= 0:  # also NaN
        raise ConfigError(f"--filter-timeout must be 0 (no limit) or a number of seconds, got {seconds}")


def _check_index_folder(index: Path) -> None:
    """Cheap checks of an index folder before anything slow (binding, loading a model)."""
    from indexing.manifest import check_index_folder

    check_index_folder(index)


def _open_engine(index: Optional[Path], **options):
    """The engine over ``--index``, or over the project's default index, saying which one was chosen (the
    opener of the Python API too: ``engine.query.api.open_engine``)."""
    from engine.query.api import open_engine

    return open_engine(index, **options)


def serve_command(
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder (default: this project's last index, named on stderr)."),
    port: int = typer.Option(8080, "--port", help="TCP port (0 = any free port)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to bind; anything beyond loopback (0.0.0.0, ::, a LAN address) needs "
                                  "--token or --insecure."),
    token: Optional[str] = typer.Option(None, "--token", envvar="ENGINE_SERVE_TOKEN", show_envvar=True,
                                        help="Require 'Authorization: Bearer TOKEN' on every route but /healthz "
                                             "(at least 16 characters; the environment variable keeps it out of "
                                             "the process list)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without --token."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder (default: the index's)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", hidden=True, help="Old name of --model."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    text_encoder: str = typer.Option(
        "auto", "--text-encoder",
        help="Single-query text encoder: auto (the fastest verified of onnx/float32/bfloat16), onnx "
             "(ONNX Runtime, float32), float32 (TorchScript; both give engine query's embeddings), "
             "bfloat16 (TorchScript, bfloat16 backbone), eager (no compiled graph)."),
    shard_backend: str = typer.Option(
        "local", "--shard-backend", help="How a sharded faiss index (engine index --faiss-shards N) is served: local "
        "(faiss IndexShards in this process) or ray (one Ray actor per shard, top-k merged here)."),
    ray: str = typer.Option("auto", "--ray", help="With --shard-backend ray: auto (local cluster) or HOST:PORT."),
    batch: str = typer.Option("on", "--batch", help="on: concurrent queries are encoded together in one encoder "
                              "call; off: one query at a time (the whole search on the model thread)."),
    batch_max: int = typer.Option(DEFAULT_MAX_BATCH, "--batch-max", help="With --batch on: most queries per "
                                  "encoder call."),
    batch_wait_ms: float = typer.Option(DEFAULT_MAX_WAIT_MS, "--batch-wait-ms", help="With --batch on: most "
                                        "milliseconds a batch waits for queries still being prepared."),
    batch_text_lanes: int = typer.Option(0, "--batch-text-lanes", help="With --batch on and ONNX Runtime text "
                                         "encoders: threads encoding text batches at once (0: one per core; 1: "
                                         "the model thread only)."),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help=MAX_PIXELS_HELP +
                                                   " Uploads over it are answered 413."),
    no_query_bank: bool = typer.Option(False, "--no-query-bank", help="Rank text queries by the plain cosine even "
                                       "when the model has a query bank (engine query-bank)."),
    filter_timeout: float = typer.Option(DEFAULT_FILTER_BUDGET_S, "--filter-timeout",
                                         help=FILTER_TIMEOUT_HELP + " Over it: HTTP 400."),
) -> None:
    """Keep the model and index in memory and answer /query (JSON), / (gallery) and /healthz over HTTP."""
    from encoders.query_text import TEXT_ENCODER_KINDS
    from engine import preflight
    from engine.data.image_guard import configure
    from engine.errors import ConfigError
    from engine.query.access import check_exposure
    from engine.query.server import make_server, serve_forever

    choices = (*TEXT_ENCODER_KINDS, "eager")
    if text_encoder not in choices:
        raise ConfigError(f"--text-encoder must be one of {', '.join(choices)}, got {text_encoder!r}")
    policy = batch_policy(batch, batch_max, batch_wait_ms, batch_text_lanes)
    preflight.check_device(device)
    configure(max_image_pixels)
    _check_filter_timeout(filter_timeout)
    checkpoint, model_flag = preflight.model_choice(model, checkpoint)
    preflight.check_checkpoint_folder(checkpoint, model_flag)
    check_exposure(host, token, insecure)
    if index is not None:
        _check_index_folder(index)
    # bind before the slow part: a busy port or a bad address is one line at once, not after the model load
    server = make_server(None, host, port, token.strip() if token else None)
    try:
        engine = _open_engine(index, checkpoint=checkpoint, device=device, text_encoder=text_encoder,
                              shard_backend=shard_backend, ray_address=ray, batch=policy,
                              filter_budget_s=filter_timeout, query_bank=not no_query_bank)
    except BaseException:
        server.server_close()
        raise
    serve_forever(engine, host, port, server=server)


def batch_policy(batch: str, batch_max: int, batch_wait_ms: float, text_lanes: int = 0):
    """``--batch on|off`` and its bounds as a BatchPolicy (None: off), checked before anything slow."""
    from engine.errors import ConfigError
    from engine.query.batching import BatchPolicy

    if batch not in ("on", "off"):
        raise ConfigError(f"--batch must be on or off, got {batch!r}")
    policy = BatchPolicy(max_batch=batch_max, max_wait_ms=batch_wait_ms, text_lanes=text_lanes).validate()
    return policy if batch == "on" else None
