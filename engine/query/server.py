"""``engine serve``: a warm HTTP server over one QueryEngine (stdlib only: ``engine.query.http_pool``).

Routes: ``GET /healthz``; ``GET /query?q=&k=&where=&rerank=&target=&rerank_depth=`` → JSON; ``POST /query`` with
a JSON body ``{"q": ..., "k": ...}``, or the raw bytes of an image (``Content-Type: image/*`` or
``application/octet-stream``, parameters in the query string), or ``multipart/form-data`` with an ``image``
field → JSON; ``GET /`` → the HTML gallery (with a search form; ``/?q=...`` shows results).
Bodies over ``MAX_BODY_BYTES`` get 413, k over ``MAX_K`` and every other bad request get 400, a missing or wrong
bearer token (``--token``) 401, all as JSON ``{"error": "..."}``; engine errors never become 500s. Timeouts,
connection and queue limits and the access log are ``http_pool``'s.
"""

from __future__ import annotations

import html
import json
import sys
import threading
import time
from dataclasses import replace
from urllib.parse import parse_qs, urlparse

from engine.errors import EngineError
from engine.query.access import OPEN_PATHS, authorized
from engine.query.request import DEFAULT_K, DEFAULT_RERANK_DEPTH, QueryRequest
from engine.query.http_guard import BodyError, load_json_object, multipart_image
from engine.query.http_handler import PooledRequestHandler
from engine.query.http_pool import PooledHTTPServer, ServerLimits

MAX_BODY_BYTES = 16 * 1024 * 1024
WORKER_THREADS = 8  # requests handled at once; idle connections hold no worker (http_pool)
MAX_K = 1000
JSON_FIELDS = ("q", "k", "where", "rerank", "target", "rerank_depth", "bbox", "near", "radius_km")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _integer(value, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise BadRequest(400, f"{name} must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(400, f"{name} must be an integer, got {value!r}") from None
    if name == "k" and not 1 <= number <= MAX_K:
        raise BadRequest(400, f"k must be within 1..{MAX_K}, got {number}")
    return number


def request_from_fields(fields: dict, image_bytes: bytes | None = None) -> QueryRequest:
    """A QueryRequest from query-string or JSON fields (values already single)."""
    unknown = sorted(set(fields) - set(JSON_FIELDS))
    if unknown:
        raise BadRequest(400, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(JSON_FIELDS)}")
    text = fields.get("q")
    for name in ("q", "where", "rerank", "target"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise BadRequest(400, f"{name} must be a string")
    if image_bytes is None and text is None:
        raise BadRequest(400, "missing q (text query) or an image body")
    from engine.query.geo_filter import parse_geo_filter

    for name in ("bbox", "near"):
        if isinstance(fields.get(name), list):  # JSON bodies may send [W, S, E, N] / [LON, LAT]
            fields = {**fields, name: ",".join(str(value) for value in fields[name])}
    try:
        place = parse_geo_filter(fields.get("bbox") or None, fields.get("near") or None,
                                 fields.get("radius_km") if fields.get("radius_km") not in ("", None) else None)
    except EngineError as error:
        raise BadRequest(400, str(error).replace("--radius-km", "radius_km").replace("--", "")) from None
    return QueryRequest(text=None if image_bytes is not None else text, image_bytes=image_bytes, place=place,
                        k=_integer(fields.get("k"), "k", DEFAULT_K), where=fields.get("where") or None,
                        rerank=fields.get("rerank") or "none", target=fields.get("target") or "images",
                        rerank_depth=_integer(fields.get("rerank_depth"), "rerank_depth", DEFAULT_RERANK_DEPTH))


def server_timing(payload: dict, serialise_ms: float, handler_ms: float) -> str:
    """The ``Server-Timing`` header of a search answer: the engine's stages (queue wait, decode, encode, search,
    rerank, total), JSON serialisation and the whole handler, in ms; the encode batch size as a description."""
    parts = []
    for name, value in payload["timings_ms"].items():
        part = f"{name};dur={value:.3f}"
        if name == "encode" and payload.get("encode_batch") is not None:
            part += f';desc="batch {int(payload["encode_batch"])}"'
        parts.append(part)
    parts += [f"serialise;dur={serialise_ms:.3f}", f"handler;dur={handler_ms:.3f}"]
    return ", ".join(parts)


class QueryHandler(PooledRequestHandler):
    engine = None  # set by make_server / attach_engine
    token: str | None = None  # bearer token every route but /healthz requires (None: no authentication)

    def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
        url = urlparse(self.path)
        fields = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self._answer(lambda: self._route_get(url.path, fields), url.path)

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        fields = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self._answer(lambda: self._route_post(url.path, fields), url.path)

    def _route_get(self, path: str, fields: dict):
        if path == "/healthz":
            return 200, "application/json", {"status": "ok", "images": self.engine.image_count,
                                             "model_fingerprint": self.engine.fingerprint}
        if path == "/query":
            return 200, "application/json", self.engine.search(request_from_fields(fields)).to_json()
        if path == "/":
            return 200, "text/html; charset=utf-8", self._page(fields)
        raise BadRequest(404, f"no route {path}; try /, /query or /healthz")

    def _route_post(self, path: str, fields: dict):
        if path != "/query":
            raise BadRequest(404, f"POST goes to /query, not {path}")
        body = self._body()
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind == "application/json":
            request = request_from_fields(load_json_object(body))
        elif kind == "multipart/form-data":
            request = request_from_fields(fields, multipart_image(self.headers.get("Content-Type") or "", body))
        elif kind.startswith("image/") or kind == "application/octet-stream":
            if not body:
                raise BadRequest(400, "empty image body")
            request = request_from_fields(fields, body)
        else:
            raise BadRequest(415, f"unsupported Content-Type {kind or '(none)'}: send application/json, image/*, "
                                  "application/octet-stream or multipart/form-data")
        return 200, "application/json", self.engine.search(request).to_json()

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest(411, "Content-Length is required")
        try:
            size = int(length)
        except ValueError:
            raise BadRequest(400, f"bad Content-Length {length!r}") from None
        if size < 0 or size > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise BadRequest(413, f"body of {size} bytes is over the {MAX_BODY_BYTES} byte limit")
        return self.rfile.read(size)

    def _page(self, fields: dict) -> str:
        from engine.query.request import QueryResult
        from engine.query.gallery import render_gallery

        value = html.escape(fields.get("q", ""), quote=True)
        form = (f"<form action='/' method='get'><input type='text' name='q' value='{value}' "
                "placeholder='e.g. airport with runways'> k <input name='k' size='3' value='"
                f"{html.escape(fields.get('k', str(DEFAULT_K)), quote=True)}'> <button>search</button></form>")
        if not fields.get("q"):
            empty = QueryResult(query="(type a query)", target="images", k=DEFAULT_K, where=None, rerank="none")
            return render_gallery(empty, form)
        return render_gallery(self.engine.search(request_from_fields(fields)), form)

    def _answer(self, route, path: str) -> None:
        headers = {}
        started = time.perf_counter()
        try:
            if path not in OPEN_PATHS and not authorized(self.headers.get("Authorization"), self.token):
                headers["WWW-Authenticate"] = 'Bearer realm="rs-engine"'
                raise BadRequest(401, "missing or wrong bearer token: send 'Authorization: Bearer TOKEN'")
            status, kind, payload = route()
        except (BadRequest, BodyError) as error:
            status, kind, payload = error.status, "application/json", {"error": str(error)}
        except EngineError as error:  # an image over the size limits is 413 (engine.data.image_guard)
            status, kind, payload = getattr(error, "http_status", 400), "application/json", {"error": str(error)}
        except Exception as error:  # noqa: BLE001 -- a server answers, logs and keeps serving
            self.log_message("internal error: %r", error)
            status, kind, payload = 500, "application/json", {"error": f"internal error: {type(error).__name__}"}
        serialising = time.perf_counter()
        data = payload.encode("utf-8") if isinstance(payload, str) else json.dumps(payload).encode("utf-8")
        if isinstance(payload, dict) and "timings_ms" in payload:
            headers["Server-Timing"] = server_timing(payload, (time.perf_counter() - serialising) * 1000,
                                                     (time.perf_counter() - started) * 1000)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


DEFAULT_LIMITS = ServerLimits(workers=WORKER_THREADS, max_body_bytes=MAX_BODY_BYTES)


def make_server(engine, host: str, port: int, token: str | None = None,
                limits: ServerLimits | None = None) -> PooledHTTPServer:
    """Bind and listen at once (a busy port fails here, before any model is loaded); ``engine`` may be
    attached later with ``attach_engine``."""
    handler = type("BoundQueryHandler", (QueryHandler,), {"engine": engine, "token": token})
    limits = replace(limits or DEFAULT_LIMITS, max_body_bytes=MAX_BODY_BYTES)
    return PooledHTTPServer((host, port), handler, limits, priority_paths=("/healthz",))


def attach_engine(server: PooledHTTPServer, engine) -> None:
    server.handler_class.engine = engine


def serve_forever(engine, host: str, port: int, token: str | None = None,
                  server: PooledHTTPServer | None = None) -> None:
    server = server or make_server(engine, host, port, token)
    attach_engine(server, engine)
    bound_host, bound_port = server.server_address[:2]
    traced = engine.text_query_encoder
    encoder = f"compiled text encoder ({traced.describe()})" if traced is not None else "eager text encoder"
    auth = "bearer token required" if server.handler_class.token else "no authentication"
    batcher = getattr(engine, "batcher", None)
    if batcher is not None:
        auth += (f"; queries encoded in batches of up to {batcher.policy.max_batch}, waiting at most "
                 f"{batcher.policy.max_wait_ms:g} ms, text on {engine.text_lanes} thread(s)")
    print(f"serving {engine.root} ({engine.image_count} images; {encoder}; {auth}) on "
          f"http://{bound_host}:{bound_port}/ — Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        engine.close()


def serve_in_thread(engine, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                    limits: ServerLimits | None = None) -> tuple[PooledHTTPServer, threading.Thread]:
    """Start a server on a background thread (tests, benchmarks); stop with ``server.shutdown()``."""
    server = make_server(engine, host, port, token, limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
