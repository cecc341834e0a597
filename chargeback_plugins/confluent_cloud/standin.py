"""A real HTTP server standing in for the Confluent Cloud API (tests, benchmark, demos).

It serves a :class:`~chargeback_plugins.confluent_cloud.recorded.RecordedOrganisation`
on 127.0.0.1 with real pagination and HTTP Basic authentication, and can be told to
misbehave the way the vendor does — 429 with rate-limit headers, 5xx, slow answers,
dropped connections — so the client's retry path is exercised over real sockets.

    with StandInServer(RecordedOrganisation.from_dir(path), credentials=("key", "secret")) as server:
        server.inject("/iam/v2/users", Fault(status=429, headers={"Retry-After": "2"}))
        settings["ccloud_api"]["base_url"] = server.url

Run ``python -m chargeback_plugins.confluent_cloud.standin DIR`` to serve a recording
until interrupted (prints the URL).
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, used for the next request whose path starts with the prefix.

    ``delay`` seconds pass before anything is sent (a client with a shorter timeout
    gives up); ``drop`` closes the connection without an answer; ``raw`` is sent as the
    body byte for byte (with ``status``, default 200) — e.g. JSON cut off mid-document;
    otherwise ``status`` is sent with ``headers`` and ``body``. ``status=None`` after a
    delay answers normally.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0
    drop: bool = False
    raw: bytes | None = None


@dataclass(frozen=True)
class SeenRequest:
    path: str
    params: dict[str, str]
    authorized: bool
    fault: Fault | None


class StandInServer:
    """``ThreadingHTTPServer`` on a free port of 127.0.0.1 answering from a recording."""

    def __init__(
        self,
        organisation: RecordedOrganisation,
        *,
        credentials: tuple[str, str] | list[tuple[str, str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.organisation = organisation
        pairs = [credentials] if isinstance(credentials, tuple) else list(credentials or [])
        # Any of the given (key, secret) pairs is accepted: the API key and each Flink region's key.
        self._accepted_auth = frozenset(
            "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode("ascii") for key, secret in pairs
        )
        self._faults: deque[tuple[str, Fault]] = deque()
        self._lock = threading.Lock()
        self.requests: list[SeenRequest] = []
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def inject(self, path_prefix: str, *faults: Fault) -> None:
        """Queue faults for the next requests whose path starts with ``path_prefix`` (in order)."""
        with self._lock:
            self._faults.extend((path_prefix, fault) for fault in faults)

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def paths(self) -> list[str]:
        """Request paths with their query, in arrival order (for asserting call order)."""
        with self._lock:
            return [r.path for r in self.requests]

    def start(self) -> StandInServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="ccloud-standin",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> StandInServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- request handling ----------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, (prefix, fault) in enumerate(self._faults):
                if path.startswith(prefix):
                    del self._faults[index]
                    return fault
        return None

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: without TCP_NODELAY, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every keep-alive answer.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the default stderr access log."""

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query, keep_blank_values=True))
                authorized = not server._accepted_auth or self.headers.get("Authorization") in (
                    server._accepted_auth
                )
                fault = server._take_fault(parts.path)
                server._record(SeenRequest(parts.path, params, authorized, fault))
                if fault is not None:
                    if fault.delay:
                        time.sleep(fault.delay)
                    if fault.drop:
                        self.close_connection = True
                        self.connection.close()
                        return
                    if fault.raw is not None:
                        self._send_bytes(fault.status or 200, fault.raw, fault.headers)
                        return
                    if fault.status is not None:
                        body = (
                            fault.body
                            if fault.body is not None
                            else {"errors": [{"status": str(fault.status)}]}
                        )
                        self._send(fault.status, body, fault.headers)
                        return
                if not authorized:
                    self._send(401, {"errors": [{"status": "401", "detail": "Unauthorized"}]}, {})
                    return
                host = self.headers.get("Host", "")
                answer = server.organisation.answer(parts.path, params, f"http://{host}")
                self._send(answer.status, answer.body, {})

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                self._send_bytes(status, json.dumps(body, separators=(",", ":")).encode("utf-8"), headers)

            def _send_bytes(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a recorded Confluent Cloud organisation over HTTP.")
    parser.add_argument("directory", type=Path, help="directory with responses.json and billing_costs.json")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default=None, help="require this API key (HTTP Basic)")
    parser.add_argument("--secret", default=None, help="require this API secret (HTTP Basic)")
    args = parser.parse_args()
    credentials = (args.key, args.secret) if args.key and args.secret else None
    organisation = RecordedOrganisation.from_dir(args.directory)
    with StandInServer(organisation, credentials=credentials, port=args.port) as server:
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
