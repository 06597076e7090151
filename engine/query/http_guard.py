"""Strict HTTP/1.1 request framing for ``engine.query.http_pool``, and the body parsers a hostile client meets.

The dispatcher decides where a request ends from the bytes alone, and ``http.server`` then parses the same
bytes again on a worker. Any byte the two read differently (a ``\\x85`` or ``\\x0b`` that ``str.splitlines``
takes for a line end, a bare LF, a folded header line, a Unicode digit in ``Content-Length``) lets a request
hide another one, or stops the dispatcher. So a head is accepted only in the one shape both parsers read the
same way, and everything else is answered 400 before a worker sees it:

* line ends are CRLF only (a bare CR or bare LF is refused), the head ends at the first empty line;
* the head is ASCII: printable characters, space and tab; no other control character and no byte over 0x7f
  (URLs are percent-encoded, header values are plain text);
* every header line is ``name: value`` with a token name and no space before the colon; obs-fold (a line
  starting with a space or tab) is refused;
* ``Content-Length`` appears at most once and is 1 to 15 ASCII digits; with ``Transfer-Encoding`` it is refused.

Body parsers: ``load_json_object`` (finite numbers only, nesting bounded by the parser's recursion limit, no
lone surrogates) and
``multipart_image`` (at most ``MAX_MULTIPART_PARTS`` parts, counted on the raw bytes before any parsing).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from engine.query.request import has_lone_surrogates

MAX_MULTIPART_PARTS = 16
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]{1,15}")
_BAD_HEAD_BYTE = re.compile(rb"[^\t\r\n\x20-\x7e]")
_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Head:
    """What the dispatcher needs to know about a buffered request head to find its end."""

    end: int  # offset of the first body byte (-1: the head is not complete yet)
    body: int = 0  # declared body length (0 when none)
    oversized: bool = False  # body larger than allowed: the handler answers 413 without it
    must_close: bool = False
    expects_continue: bool = False
    problem: str = ""  # malformed framing: answered 400 by the dispatcher


def frame_head(buffer: bytes | bytearray, max_body: int) -> Head:
    """Where the request at the start of ``buffer`` ends, or why it is refused (``problem``).

    Called again as bytes arrive; an incomplete head is judged on what is there, so a bare LF or a stray byte
    is refused at once rather than after the request timeout."""
    end = buffer.find(_END)
    head = bytes(buffer[:end] if end >= 0 else buffer)
    problem = _line_end_problem(head, complete=end >= 0)
    if not problem:
        bad = _BAD_HEAD_BYTE.search(head)
        if bad:
            problem = f"byte 0x{bad.group()[0]:02x} in the request head (only printable ASCII is accepted)"
    if problem:
        return Head(end=max(end, 0), problem=problem)
    if end < 0:
        return Head(end=-1)
    return _headers(head.split(b"\r\n")[1:], end + len(_END), max_body)


def _line_end_problem(head: bytes, complete: bool) -> str:
    body = head if complete or not head.endswith(b"\r") else head[:-1]  # a CR may be half of a CRLF to come
    if body.replace(b"\r\n", b"").find(b"\n") >= 0:
        return "bare LF in the request head (lines must end with CRLF)"
    if body.replace(b"\r\n", b"").find(b"\r") >= 0:
        return "bare CR in the request head (lines must end with CRLF)"
    return ""


def _headers(lines: list[bytes], end: int, max_body: int) -> Head:
    lengths: list[bytes] = []
    chunked = expects = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            return Head(end=end, problem="folded header line (obs-fold) in the request head")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            shown = line[:40].decode("ascii", "replace")
            return Head(end=end, problem=f"malformed header line {shown!r} (expected 'Name: value')")
        name, value = name.lower(), value.strip(b" \t")
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            expects = True
    if len(lengths) > 1:
        return Head(end=end, problem="more than one Content-Length header")
    if chunked and lengths:
        return Head(end=end, problem="both Transfer-Encoding and Content-Length")
    if chunked:  # no chunked uploads: the handler answers 411, and the unread chunks end the connection
        return Head(end=end, must_close=True)
    if not lengths:
        return Head(end=end)
    if not _DIGITS.fullmatch(lengths[0]):
        return Head(end=end, problem=f"bad Content-Length {lengths[0][:40].decode('ascii', 'replace')!r} "
                                     "(expected 1 to 15 ASCII digits)")
    size = int(lengths[0])
    if size > max_body:
        return Head(end=end, oversized=True, must_close=True)
    return Head(end=end, body=size, expects_continue=expects)


# ---- bodies --------------------------------------------------------------------------------------------------
class BodyError(ValueError):
    """A request body that cannot be accepted; ``status`` is the HTTP answer (400 or 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _refuse_constant(name: str):
    raise BodyError(400, f"malformed JSON body: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(400, f"malformed JSON body: number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:
        raise BodyError(400, f"malformed JSON body: integer {text[:40]}... is out of range")
    return int(text)


def load_json_object(body: bytes) -> dict:
    """A JSON object from a request body; ``BodyError`` (400) with one line for anything else."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(400, f"malformed JSON body: not UTF-8 (byte {error.start})") from None
    try:
        payload = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                             parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        raise BodyError(400, f"malformed JSON body: {error}") from None
    except RecursionError:
        raise BodyError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(payload, dict):
        raise BodyError(400, "the JSON body must be an object such as {\"q\": \"airport\", \"k\": 10}")
    _check_text(payload)
    return payload


def _check_text(node) -> None:
    """Refuse lone surrogates (``"\\udcff"``): they cannot be encoded as UTF-8 anywhere downstream."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and has_lone_surrogates(item):
            raise BodyError(400, "malformed JSON body: a string holds a lone surrogate (\\ud800-\\udfff escape); "
                                 "send valid Unicode text")


def multipart_image(content_type: str, body: bytes, field: str = "image",
                    max_parts: int = MAX_MULTIPART_PARTS) -> bytes:
    """The bytes of the ``field`` part of a ``multipart/form-data`` body; at most ``max_parts`` parts."""
    from email.parser import BytesParser
    from email.policy import HTTP

    match = re.search(r'boundary="?([^";]{1,70})"?', content_type or "")
    if not match:
        raise BodyError(400, "multipart body without a boundary parameter in Content-Type")
    delimiter = b"--" + match.group(1).encode("latin-1", "replace")
    parts = body.count(delimiter) - 1  # the last delimiter closes the body
    if parts > max_parts:
        raise BodyError(413, f"multipart body with {parts} parts; at most {max_parts} are accepted")
    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    for part in message.iter_parts() if message.is_multipart() else []:
        if part.get_param("name", header="content-disposition") == field:
            return part.get_payload(decode=True) or b""
    raise BodyError(400, f"multipart body has no field named {field!r}")
