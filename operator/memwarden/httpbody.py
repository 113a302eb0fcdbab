"""Request bodies on memwarden's HTTP servers: read as sent, under a limit, never inflated.

Shared by the admission webhook (``webhook/server.py``) and the operator's HTTP API
(``handlers/http.py``: the Alertmanager receiver, the evidence API). Both are reachable by
anything that can open a connection to the operator's pod, so what a body costs is bounded
here, not by the client's good manners:

- No request body is decompressed. None of memwarden's clients compresses one (the API
  server's admission requests, Alertmanager's notifications, the toolbox's uploads, whose
  ``application/gzip`` bundle is data, not a ``Content-Encoding``), and aiohttp by default
  inflates a ``Content-Encoding: gzip`` body as it arrives: 64 KiB of gzip became up to
  64 MiB in the operator per request, kept until the garbage collector ran (seen by
  ``tests/integration/test_http_fuzz.py``). Such a body now reaches the handler as the
  bytes sent, and is refused as what it is (not JSON, or a bundle like any other).
- :func:`read_limited` stops at the limit and returns None, instead of raising from a
  frame that holds the bytes read so far: aiohttp's ``request.read()`` does the latter,
  and the traceback keeps each refused 8 MiB body alive until a collection.
- ``Expect`` is handled by :func:`expect_handler`: aiohttp's own answered an expectation
  it does not know with a 417 whose text quoted it, and raised (a 500) when its bytes
  were not UTF-8. It is installed as aiohttp's default (a private name, checked at
  import) because routes are not the only users: a request that matches no route (404,
  405) is handled by a route aiohttp makes on the spot, with the default.
- A request aiohttp cannot parse (a bad header, a control byte in the path, a broken
  chunk) is answered 400 by aiohttp and logged as one WARNING line, not at ERROR with a
  traceback: a client's mistake, and anyone who can connect could otherwise fill the
  operator's log with tracebacks at will.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from aiohttp import HttpVersion11, hdrs, web, web_urldispatcher
from aiohttp.http_exceptions import HttpProcessingError


class _ClientMistakes(logging.Filter):
    """Turns aiohttp's ERROR-with-traceback for a request it could not parse (a 4xx
    ``HttpProcessingError``) into one WARNING line naming the client and the mistake."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            client = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "refused a malformed HTTP request from %s: %s"
            record.args = (client, " ".join(str(exc.message).split())[:200])
            record.exc_info = record.exc_text = None
        return True


#: aiohttp's server logger for memwarden's servers (it logs what it could not serve).
SERVER_LOGGER = logging.getLogger("memwarden.http")
SERVER_LOGGER.addFilter(_ClientMistakes())

#: Keyword arguments for every ``aiohttp.web.AppRunner`` memwarden starts (see module doc).
SERVER_OPTIONS: dict[str, Any] = {"auto_decompress": False, "logger": SERVER_LOGGER}

_CHUNK = 64 * 1024


async def expect_handler(request: web.Request) -> None:
    """aiohttp's ``Expect`` handling (``100-continue`` answered, any other expectation
    417) without quoting the header back (see module doc)."""
    if request.version != HttpVersion11:
        return
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's: the response has not started
        return
    raise web.HTTPExpectationFailed(text="unknown Expect header: only 100-continue is")


def _install_expect_handler() -> None:
    """Make :func:`expect_handler` aiohttp's default (see module doc)."""
    if not inspect.iscoroutinefunction(getattr(web_urldispatcher, _DEFAULT_EXPECT, None)):
        raise ImportError(f"aiohttp.web_urldispatcher.{_DEFAULT_EXPECT} is gone: see httpbody")
    setattr(web_urldispatcher, _DEFAULT_EXPECT, expect_handler)


_DEFAULT_EXPECT = "_default_expect_handler"
_install_expect_handler()


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (also for chunked bodies); a body
    announced larger than ``limit`` is not read at all.

    A body cut short (the client hung up, a broken chunk) raises ``HTTPBadRequest``: a 400
    if anyone is still listening, and no traceback in the log for a client's mistake."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    except (ConnectionError, HttpProcessingError) as exc:
        raise web.HTTPBadRequest(text=f"body not read: {exc}"[:300]) from None
    return b"".join(chunks)


__all__ = ["SERVER_LOGGER", "SERVER_OPTIONS", "expect_handler", "read_limited"]
