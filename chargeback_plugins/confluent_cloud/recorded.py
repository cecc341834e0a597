"""A recorded Confluent Cloud organisation, answered the way the API would answer.

The recording is two files (optionally gzipped): ``responses.json`` — the complete,
un-paginated body of every list endpoint, keyed by path plus the ``environment``
filter (``/cmk/v2/clusters?environment=env-x``), Flink statements keyed
``/__host/<flink host><path>`` — and ``billing_costs.json`` with every cost row.

:class:`RecordedOrganisation` paginates those bodies itself (``page_size``,
``page_token``, ``metadata.next``), filters billing rows by ``[start_date, end_date)``
and answers 404 for anything not recorded. Two front ends use it through the plugin's
real HTTP client: :class:`ReplayTransport` (an httpx transport for the offline demo,
no sockets) and ``standin.StandInServer`` (a real HTTP server for tests and the
benchmark).
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

RESPONSES_FILE = "responses.json"
BILLING_FILE = "billing_costs.json"
BILLING_PATH = "/billing/v1/costs"
HOST_PREFIX = "/__host/"
MAX_PAGE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
    status: int
    body: Any

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


def read_json(path: Path) -> Any:
    """``path`` or, when it does not exist, ``path`` + ``.gz``."""
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    gz = path.with_name(path.name + ".gz")
    with gzip.open(gz, "rt", encoding="utf-8") as handle:
        return json.load(handle)


class RecordedOrganisation:
    """Answers GET requests from a recording, with real pagination.

    ``shift_days`` moves every date of the recording (billing ``start_date``/``end_date``
    and every ``created_at``) by whole days, so an old recording can stand for recent
    days; relations between dates (a cluster created mid-day) are unchanged.
    ``max_page_size`` caps the page size a client may ask for, as real APIs do.
    ``ignore_billing_window`` makes the billing endpoint answer every row whatever dates
    were asked for: a misbehaving vendor, to prove the engine discards rows dated outside
    the requested range instead of storing them under the wrong date.
    """

    def __init__(
        self,
        responses: Mapping[str, Any],
        billing_rows: list[Any],
        *,
        shift_days: int = 0,
        max_page_size: int = MAX_PAGE_SIZE,
        ignore_billing_window: bool = False,
    ) -> None:
        self.responses = dict(responses)
        self.billing_rows = list(billing_rows)
        self.max_page_size = max_page_size
        self.ignore_billing_window = ignore_billing_window
        if shift_days:
            self.responses = {k: _shift_created_at(v, shift_days) for k, v in self.responses.items()}
            self.billing_rows = [_shift_billing_row(r, shift_days) for r in self.billing_rows]

    @classmethod
    def from_dir(
        cls, directory: Path, *, shift_days: int = 0, max_page_size: int = MAX_PAGE_SIZE
    ) -> RecordedOrganisation:
        responses = read_json(directory / RESPONSES_FILE)
        billing = read_json(directory / BILLING_FILE)
        rows = billing.get("data", []) if isinstance(billing, dict) else billing
        return cls(responses, rows, shift_days=shift_days, max_page_size=max_page_size)

    def answer(self, path: str, params: Mapping[str, str], base_url: str, host: str = "") -> RecordedAnswer:
        """The answer to ``GET path?params``; ``base_url`` is used to build ``metadata.next``."""
        if path == BILLING_PATH:
            return self._billing(params, base_url)
        body = self._lookup(path, params, host)
        if body is None:
            return RecordedAnswer(404, {"errors": [{"status": "404", "detail": f"Not Found: {path}"}]})
        if isinstance(body, dict) and isinstance(body.get("data"), list):
            return self._page(path, params, base_url, body, body["data"])
        return RecordedAnswer(200, body)

    def _lookup(self, path: str, params: Mapping[str, str], host: str) -> Any:
        environment = params.get("environment")
        candidates = [f"{path}?environment={environment}"] if environment else []
        candidates.append(path)
        if host:
            candidates.append(f"{HOST_PREFIX}{host}{path}")
        for key in candidates:
            if key in self.responses:
                return self.responses[key]
        return None

    def _billing(self, params: Mapping[str, str], base_url: str) -> RecordedAnswer:
        try:
            start = date.fromisoformat(params["start_date"])
            end = date.fromisoformat(params["end_date"])
        except (KeyError, ValueError):
            return RecordedAnswer(
                400, {"errors": [{"status": "400", "detail": "start_date and end_date required"}]}
            )
        rows = [
            row for row in self.billing_rows if self.ignore_billing_window or _billed_within(row, start, end)
        ]
        envelope = {"api_version": "billing/v1", "kind": "CostList", "metadata": {}, "data": rows}
        return self._page(BILLING_PATH, params, base_url, envelope, rows)

    def _page(
        self,
        path: str,
        params: Mapping[str, str],
        base_url: str,
        envelope: Mapping[str, Any],
        items: list[Any],
    ) -> RecordedAnswer:
        try:
            size = int(params.get("page_size", "100"))
            offset = int(params.get("page_token", "t0").removeprefix("t"))
        except ValueError:
            return RecordedAnswer(
                400, {"errors": [{"status": "400", "detail": "invalid page_size or page_token"}]}
            )
        size = max(1, min(size, self.max_page_size))
        page = items[offset : offset + size]
        metadata: dict[str, Any] = {"total_size": len(items)}
        if offset + size < len(items):
            query = {k: v for k, v in params.items() if k != "page_token"}
            query["page_token"] = f"t{offset + size}"
            metadata["next"] = f"{base_url}{path}?{urlencode(query)}"
        body = {**envelope, "data": page, "metadata": metadata}
        return RecordedAnswer(200, body)


def _billed_within(row: Any, start: date, end: date) -> bool:
    """A row belongs to ``[start, end)`` by its ``start_date``; undated rows are in every window."""
    raw = row.get("start_date") if isinstance(row, dict) else None
    try:
        day = date.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        day = None
    return day is None or start <= day < end


def _shift_billing_row(row: Any, days: int) -> Any:
    if not isinstance(row, dict):
        return row
    shifted = dict(row)
    for name in ("start_date", "end_date"):
        value = shifted.get(name)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                shifted[name] = (date.fromisoformat(value) + timedelta(days=days)).isoformat()
    return shifted


def _shift_created_at(body: Any, days: int) -> Any:
    body = copy.deepcopy(body)
    _shift_in_place(body, days)
    return body


def _shift_in_place(node: Any, days: int) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "created_at" and isinstance(value, str):
                node[key] = _shift_instant(value, days)
            else:
                _shift_in_place(value, days)
    elif isinstance(node, list):
        for item in node:
            _shift_in_place(item, days)


def _shift_instant(text: str, days: int) -> str:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return text
    shifted = (parsed + timedelta(days=days)).isoformat()
    return shifted.replace("+00:00", "Z") if text.endswith("Z") else shifted


class ReplayTransport(httpx.BaseTransport):
    """An httpx transport answering from a :class:`RecordedOrganisation` instead of the network.

    Requests to any host are answered; a host other than the API's (a Flink regional
    endpoint) is looked up under ``/__host/<host><path>`` as the recording stores it.
    """

    def __init__(self, organisation: RecordedOrganisation) -> None:
        self.organisation = organisation

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        params = dict(url.params)
        base = f"{url.scheme}://{url.netloc.decode('ascii')}"
        answer = self.organisation.answer(url.path, params, base, host=url.host)
        return httpx.Response(
            answer.status,
            headers={"Content-Type": "application/json"},
            content=answer.encode(),
            request=request,
        )
