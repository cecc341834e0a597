"""HTTP client of the Confluent Cloud API (spec/confluent-cloud.md §2).

One client per (base URL, credentials). It owns the rules every endpoint shares:
Basic auth, timeouts, a minimum spacing between requests, token pagination, 404 as
"nothing there", and bounded retries that honour the server's rate-limit headers.
Endpoint modules only say *what* to fetch.

Waiting and randomness are injected (``sleep``, ``rng``, ``wait_scale``) so tests can
run the real retry path against a real server without sleeping for minutes; the
defaults are the spec's.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from chargeback_pipeline.redaction import Redactor
from chargeback_pipeline.tls import default_tls_context
from chargeback_plugins.confluent_cloud.errors import CCloudApiError, CCloudConnectionError

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 99
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_REQUEST_INTERVAL_SECONDS = 0.1
MAX_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 60.0
RATE_LIMIT_CAP_SECONDS = 300.0
BODY_EXCERPT = 500
RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Timeouts and connection failures (DNS, refused, reset, dropped mid-response) are retried.
RETRIED_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)

Params = Mapping[str, str | int]


def backoff_seconds(attempt: int, rng: random.Random) -> float:
    """``min(60, 2.0 × 2^k + U(0, 1))`` for the 0-based failed attempt ``k`` (≈ 2, 4, 8, 16, 32 s)."""
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt + rng.uniform(0, 1))


def rate_limit_hint(headers: httpx.Headers, now: float) -> float | None:
    """Seconds the server asks us to wait, from the first rate-limit header present.

    ``Retry-After`` (seconds), ``RateLimit-Reset`` (relative seconds), then
    ``X-RateLimit-Reset`` (epoch seconds, turned into a delay from ``now``). Header
    names are case-insensitive; an unreadable value counts as absent.
    """
    for name, absolute in (("retry-after", False), ("ratelimit-reset", False), ("x-ratelimit-reset", True)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if value != value:  # NaN
            continue
        return value - now if absolute else value
    return None


def rate_limited_wait(hint: float | None, attempt: int, rng: random.Random) -> float:
    """Wait after a 429: ``min(300, max(1.0, w) × U(1.1, 1.2))`` with ``w`` the hint, else the backoff."""
    w = hint if hint is not None else backoff_seconds(attempt, rng)
    return min(RATE_LIMIT_CAP_SECONDS, max(1.0, w) * rng.uniform(1.1, 1.2))


class CCloudClient:
    """Confluent Cloud REST client: ``list`` for paginated listings, ``get_raw`` for single bodies."""

    def __init__(
        self,
        base_url: str,
        key: str,
        secret: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        request_interval_seconds: float = DEFAULT_REQUEST_INTERVAL_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        wait_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.base_url = base_url.rstrip("/")
        # The secret and the Basic header's base64 of key:secret, in every spelling an echo may use.
        self._redactor = Redactor(basic_auth=[(key, secret)])
        self._interval = request_interval_seconds
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._wait_scale = wait_scale
        self._clock = clock
        self._lock = threading.Lock()
        self._last_finished: float | None = None
        self.request_count = 0
        self._http = httpx.Client(
            auth=httpx.BasicAuth(key, secret),
            timeout=httpx.Timeout(timeout_seconds),
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
            verify=default_tls_context(),
        )

    def __repr__(self) -> str:
        return f"CCloudClient(base_url={self.base_url!r})"

    # --- public calls --------------------------------------------------------------------

    def list(
        self, path: str, params: Params | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[Any]:
        """Every item of a token-paginated listing, page by page (§2 Pagination).

        The ``next`` URL is never fetched: only its ``page_token`` is sent back to the
        same path with the same parameters, so a stand-in server may name any host.
        """
        query: dict[str, str | int] = {"page_size": page_size, **(params or {})}
        seen: set[str] = set()
        while True:
            body = self._get(path, query, listing=True)
            data = body.get("data") if isinstance(body, dict) else None
            if data is not None and not isinstance(data, list):
                raise CCloudApiError(200, f"GET {path}: 'data' is a {type(data).__name__}, not a list")
            yield from data or ()
            token = _next_page_token(body)
            if token is None:
                return
            if token in seen:
                raise CCloudApiError(None, f"GET {path}: pagination loop (page token repeated)")
            seen.add(token)
            query = {**query, "page_token": token}

    def get_raw(self, path: str, params: Params | None = None) -> Any:
        """One GET with only the caller's parameters; 404 → ``{}``."""
        return self._get(path, dict(params or {}), listing=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CCloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one logical call ----------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str | int], *, listing: bool) -> Any:
        url = self.base_url + path
        with self._lock:
            self._throttle()
            try:
                status, body = self._send_with_retries(url, path, params)
            finally:
                self._last_finished = time.monotonic()
        if status == 404:
            log.debug("GET %s: 404, treated as empty", path)
            return {"data": [], "metadata": {}} if listing else {}
        return body

    def _throttle(self) -> None:
        """At least ``request_interval_seconds`` between the end of one answer and the next call."""
        if self._last_finished is None or self._interval <= 0:
            return
        remaining = self._last_finished + self._interval - time.monotonic()
        if remaining > 0:
            self._sleep(remaining)

    def _send_with_retries(self, url: str, path: str, params: Mapping[str, str | int]) -> tuple[int, Any]:
        """``(status, parsed body)`` of the first usable answer (200 or 404), after retries.

        A 200 whose body is not valid JSON (cut off by a proxy or a dropped connection
        that still delivered ``Content-Length`` bytes) is retried like a 5xx: the next
        answer is usually complete, and the listing cannot continue without its page
        token. When every attempt got such a body, the error names the endpoint and
        shows the start of the last body, never a bare ``JSONDecodeError``.
        """
        for attempt in range(self._max_attempts):
            last = attempt == self._max_attempts - 1
            self.request_count += 1
            try:
                response = self._http.get(url, params=dict(params))
            except RETRIED_TRANSPORT_ERRORS as exc:
                error = CCloudConnectionError(self._redact(f"GET {path}: {type(exc).__name__}: {exc}"))
                if last:
                    raise error from None
                self._wait(backoff_seconds(attempt, self._rng), path, attempt, type(exc).__name__)
                continue
            except httpx.HTTPError as exc:
                raise CCloudConnectionError(
                    self._redact(f"GET {path}: {type(exc).__name__}: {exc}")
                ) from None
            status = response.status_code
            if status == 404:
                return status, None
            if status == 200:
                try:
                    body = response.json()
                except ValueError as exc:
                    excerpt = self._redactor.excerpt(response.text, BODY_EXCERPT)
                    problem = f"GET {path}: body is not valid JSON ({exc}): {excerpt}"
                    if last:
                        attempts = self._max_attempts
                        raise CCloudApiError(200, f"{problem} (after {attempts} attempts)") from None
                    wait = backoff_seconds(attempt, self._rng)
                    self._wait(wait, path, attempt, "truncated or invalid JSON")
                    continue
                # Only a ``\uD8xx`` escape can carry a lone surrogate: skip the walk otherwise.
                if b"\\ud" in response.content or b"\\uD" in response.content:
                    body = without_lone_surrogates(body)
                return status, body
            body = self._redactor.excerpt(response.text, BODY_EXCERPT)
            if status not in RETRIED_STATUS:
                raise CCloudApiError(status, f"GET {path}: {body}")
            if last:
                raise CCloudApiError(status, f"GET {path}: {body} (after {self._max_attempts} attempts)")
            if status == 429:
                wait = rate_limited_wait(rate_limit_hint(response.headers, self._clock()), attempt, self._rng)
            else:
                wait = backoff_seconds(attempt, self._rng)
            self._wait(wait, path, attempt, f"HTTP {status}")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait(self, seconds: float, path: str, attempt: int, why: str) -> None:
        log.warning(
            "GET %s: %s; retry %d of %d in %.1f s", path, why, attempt + 1, self._max_attempts - 1, seconds
        )
        self._sleep(seconds * self._wait_scale)

    def _redact(self, text: str) -> str:
        """Belt and braces: a server that echoes the credentials back must not put them in our errors."""
        return self._redactor.redact(text)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone UTF-16 surrogate in its strings (keys too) replaced by U+FFFD.

    JSON may escape half a surrogate pair (``"lkc-\\ud800"``) and ``json`` decodes it into a
    ``str`` that no UTF-8 sink accepts: DuckDB refuses it mid-transaction, which fails the
    whole billing date with "transaction is aborted", and so would the CSV writer. The
    replacement character keeps the row (and its money) and shows where the id was broken.
    """
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in value.items()}
    return value


def _next_page_token(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    metadata = body.get("metadata")
    next_url = metadata.get("next") if isinstance(metadata, dict) else None
    if not isinstance(next_url, str) or not next_url:
        return None
    tokens = parse_qs(urlsplit(next_url).query).get("page_token")
    return tokens[0] if tokens and tokens[0] else None
