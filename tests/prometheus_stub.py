"""A real HTTP server on 127.0.0.1 standing in for Prometheus where the real one cannot misbehave.

Tests script its answers (status, body, delay) per request and read back what it
received: method, path, headers, the decoded form and how many requests were in flight
at once. Nothing in the client is patched; the bytes go over a real socket.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, list[str]]

    def param(self, name: str) -> str:
        (value,) = self.form[name]
        return value


@dataclass
class Reply:
    status: int = 200
    body: str | bytes = ""
    delay: float = 0.0
    content_type: str = "application/json"


Responder = Callable[[Received], Reply]


def success(result: list[dict[str, Any]], result_type: str = "matrix") -> Reply:
    return Reply(
        body=json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}})
    )


def matrix(*series: tuple[dict[str, str], list[tuple[float, str]]]) -> Reply:
    return success([{"metric": labels, "values": [[ts, v] for ts, v in points]} for labels, points in series])


@dataclass
class StubPrometheus:
    """Scripted answers; ``respond`` may be replaced by a test at any time."""

    respond: Responder = field(default=lambda req: matrix())
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Answer with ``replies`` in order, repeating the last one."""
        queue = list(replies)

        def respond(req: Received) -> Reply:
            with self._lock:
                return queue.pop(0) if len(queue) > 1 else queue[0]

        self.respond = respond

    def _enter(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _handler(stub: StubPrometheus) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            received = Received(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                form=parse_qs(body.decode("utf-8"), keep_blank_values=True),
            )
            stub._enter(received)
            try:
                reply = stub.respond(received)
                if reply.delay:
                    time.sleep(reply.delay)
            finally:
                stub._leave()
            payload = reply.body.encode("utf-8") if isinstance(reply.body, str) else reply.body
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        do_POST = _serve
        do_GET = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the concurrency tests open 30 connections at once


@contextmanager
def running_stub() -> Iterator[StubPrometheus]:
    stub = StubPrometheus()
    server = _Server(("127.0.0.1", 0), _handler(stub))
    stub.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
