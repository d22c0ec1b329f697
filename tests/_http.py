"""What the fake HTTP servers of the judge tests share (tests/test_judge.py, tests/test_faults.py)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


def send_reply(handler: BaseHTTPRequestHandler, status: int, headers: dict, data: bytes) -> None:
    """Answer the request ``handler`` is serving: the status line, ``headers``, a Content-Length and ``data``."""
    handler.send_response(status)
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
