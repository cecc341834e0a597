"""A real Prometheus server for integration tests, loaded with ``promtool``.

Series are written as OpenMetrics text, turned into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics`` and served by the ``prometheus``
binary from Debian's package on 127.0.0.1. Nothing is mocked: the queries the
engine sends are evaluated by Prometheus itself (``increase()``, lookback, label
matching), so the tests see exactly what a production server would answer.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

DATA = Path(__file__).resolve().parent / "data"
SAMPLE_SERIES = DATA / "sample-small" / "prometheus" / "series.json.gz"

_CONFIG = "global:\n  evaluation_interval: 1h\nscrape_configs: []\n"
_READY_TIMEOUT_S = 60.0


def require_binary(name: str) -> str:
    """Path of ``name``; a missing binary fails (CI installs Debian's ``prometheus``)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"'{name}' not found on PATH: install Debian's 'prometheus' package "
            "(scripts/test.sh does this when it runs as root)"
        )
    return path


def load_series(path: Path = SAMPLE_SERIES) -> list[dict[str, Any]]:
    """The series of a ``series.json`` (optionally gzipped); numbers kept as exact decimals."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        document = json.load(handle, parse_float=Decimal)
    series = document["series"] if isinstance(document, dict) else document
    return list(series)


def series_samples(series: Mapping[str, Any]) -> list[tuple[int, Decimal]]:
    """``(unix_seconds, value)`` pairs of one series, in either of the file's two shapes."""
    if "samples" in series:
        pairs = [(int(ts), value) for ts, value in series["samples"]]
    else:
        start, step = int(series["start"]), int(series["step"])
        pairs = [(start + i * step, value) for i, value in enumerate(series["values"])]
    return [(ts, Decimal(str(value))) for ts, value in pairs if value is not None]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series_to_openmetrics(series: Iterable[Mapping[str, Any]]) -> str:
    """OpenMetrics text with every sample timestamped, grouped by metric name, ``# EOF`` last."""
    by_metric: dict[str, list[str]] = {}
    for one in series:
        labels = dict(one["labels"])
        name = labels.pop("__name__")
        rendered = ",".join(f'{key}="{_escape(str(val))}"' for key, val in sorted(labels.items()))
        selector = f"{name}{{{rendered}}}" if rendered else name
        lines = by_metric.setdefault(name, [])
        lines.extend(f"{selector} {value} {ts}" for ts, value in series_samples(one))
    body = [line for name in sorted(by_metric) for line in by_metric[name]]
    return "\n".join([*body, "# EOF", ""])


def create_blocks(openmetrics: str | Path, data_dir: Path) -> None:
    """Turn OpenMetrics text (or a file of it) into TSDB blocks under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(openmetrics, str):
        source = data_dir.parent / f"{data_dir.name}.om.txt"
        source.write_text(openmetrics, encoding="utf-8")
    else:
        source = openmetrics
    result = subprocess.run(
        [require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(source), str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"promtool could not load {source}: {result.stderr.strip()[-2000:]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """One ``prometheus`` process on 127.0.0.1 serving a data directory; restartable."""

    def __init__(self, workdir: Path, data_dir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._config = workdir / "prometheus.yml"
        self._config.write_text(_CONFIG, encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> PrometheusServer:
        if self.running:
            return self
        log = (self.workdir / "prometheus.log").open("ab")
        self._process = subprocess.Popen(
            [
                require_binary("prometheus"),
                f"--config.file={self._config}",
                f"--storage.tsdb.path={self.data_dir}",
                "--storage.tsdb.retention.time=100y",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                break
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        log = (self.workdir / "prometheus.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"prometheus on {self.url} did not become ready:\n{log}")

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def clone_prometheus(server: PrometheusServer, workdir: Path) -> PrometheusServer:
    """A second, independently stoppable server over a copy of ``server``'s blocks."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    shutil.copytree(
        server.data_dir,
        data_dir,
        ignore=shutil.ignore_patterns("lock", "wal", "chunks_head", "queries.active"),
    )
    return PrometheusServer(workdir, data_dir).start()


def start_prometheus(workdir: Path, openmetrics: str | Path | None = None) -> PrometheusServer:
    """A started server over ``workdir/data``, loaded from ``openmetrics`` when given."""
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    if openmetrics is not None:
        create_blocks(openmetrics, data_dir)
    data_dir.mkdir(exist_ok=True)
    return PrometheusServer(workdir, data_dir).start()


class PrometheusProxy:
    """A real HTTP proxy on 127.0.0.1 in front of a Prometheus, which a test can take down.

    ``down_when(request)`` is asked for every request (method, path and form fields); the
    first time it says yes the proxy goes down for good — that request and every later
    one find the port closed (connection refused), as when the server process dies mid
    run. ``up()`` listens again on the same port (the server came back). ``seen`` lists
    the forwarded requests' form fields, for asserting what the run asked.
    """

    def __init__(self, upstream: str, down_when: Callable[[dict[str, str]], bool] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.down_when = down_when
        self.seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._dead = False
        self._stopper: threading.Thread | None = None
        self._client = httpx.Client(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None and not self._dead

    def up(self) -> PrometheusProxy:
        if self._stopper is not None:  # a shutdown started from a request must finish first
            self._stopper.join(timeout=10)
            self._stopper = None
        self._dead = False
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
            self._server.daemon_threads = True
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
            self._thread.daemon = True
            self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening; connections already accepted are dropped without an answer."""
        self._dead = True
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10)

    def close(self) -> None:
        self.down()
        self._client.close()

    def _forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self._client.request(method, self.upstream + path, content=body, headers=headers)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the default stderr access log."""

            def do_GET(self) -> None:
                self._relay("GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._relay("POST", self.rfile.read(length))

            def _relay(self, method: str, body: bytes) -> None:
                parts = urlsplit(self.path)
                fields = dict(parse_qsl(parts.query)) | dict(parse_qsl(body.decode("utf-8", "replace")))
                fields["path"] = parts.path
                with proxy._lock:
                    if not proxy._dead and proxy.down_when is not None and proxy.down_when(fields):
                        proxy._dead = True
                        # Shut the listener from another thread (shutdown() waits for this one).
                        proxy._stopper = threading.Thread(target=proxy.down, daemon=True)
                        proxy._stopper.start()
                    dead = proxy._dead
                if dead:
                    # Also requests on kept-alive connections accepted before: no answer.
                    self.close_connection = True
                    self.connection.close()
                    return
                with proxy._lock:
                    proxy.seen.append(fields)
                headers = {
                    "Content-Type": self.headers.get("Content-Type", "application/x-www-form-urlencoded")
                }
                answer = proxy._forward(method, self.path, body, headers)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        return Handler
