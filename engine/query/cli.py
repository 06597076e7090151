"""``engine query`` and ``engine serve``: argument handling only (the work is in QueryEngine and server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from engine.query.config import DEFAULT_K, DEFAULT_RERANK_DEPTH, RerankOptions

_DEFAULTS = RerankOptions()


def query_command(
    text: Optional[str] = typer.Argument(None, help="What to look for, e.g. \"airport with runways\"."),
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder (default: the last one built)."),
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
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write a gallery page to this file."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Model folder (default: the index's)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
) -> None:
    """Search an index with text or an image; filters run before the k-NN search."""
    from engine.query.config import QueryRequest, validate_request
    from engine.query.engine import QueryEngine
    from engine.query.output import print_json, print_table
    from engine.query.state import resolve_index_dir

    options = RerankOptions(layer=layer, prf_references=prf_references, aas_text_weight=aas_weight, par_ccs=par_ccs,
                            par_ascs=par_ascs, par_top_fraction=par_top, par_beta=par_beta)
    request = QueryRequest(text=text, image_path=str(image) if image is not None else None, k=k, target=target,
                           where=where, rerank=rerank, rerank_depth=rerank_depth, options=options)
    validate_request(request)  # before the (slow) model load: bad flags answer at once
    engine = QueryEngine(resolve_index_dir(index), checkpoint=checkpoint, device=device)
    try:
        result = engine.search(request)
    finally:
        engine.close()
    if html_out is not None:
        from engine.query.gallery import write_gallery

        write_gallery(result, html_out)
    if as_json:
        print_json(result)
    else:
        print_table(result)


def serve_command(
    index: Optional[Path] = typer.Option(None, "--index", help="Index folder (default: the last one built)."),
    port: int = typer.Option(8080, "--port", help="TCP port (0 = any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes it to the network."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Model folder (default: the index's)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    text_encoder: str = typer.Option(
        "auto", "--text-encoder",
        help="Single-query text encoder: auto (the fastest verified of onnx/float32/bfloat16), onnx "
             "(ONNX Runtime, float32), float32 (TorchScript; both give engine query's embeddings), "
             "bfloat16 (TorchScript, bfloat16 backbone), eager (no compiled graph)."),
) -> None:
    """Keep the model and index in memory and answer /query (JSON), / (gallery) and /healthz over HTTP."""
    from engine.query.engine import QueryEngine
    from engine.query.server import serve_forever
    from engine.query.state import resolve_index_dir

    from encoders.query_text import TEXT_ENCODER_KINDS
    from engine.errors import ConfigError

    choices = (*TEXT_ENCODER_KINDS, "eager")
    if text_encoder not in choices:
        raise ConfigError(f"--text-encoder must be one of {', '.join(choices)}, got {text_encoder!r}")
    engine = QueryEngine(resolve_index_dir(index), checkpoint=checkpoint, device=device, text_encoder=text_encoder)
    serve_forever(engine, host, port)
