"""The Confluent Cloud HTTP client against a real stand-in server (spec/confluent-cloud.md §2).

Every test talks HTTP over 127.0.0.1. Waits are recorded by an injected ``sleep``
instead of being slept, so the retry schedule itself is asserted, not its duration.
"""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest

from chargeback_plugins.confluent_cloud.client import (
    BODY_EXCERPT,
    CCloudClient,
    backoff_seconds,
    rate_limited_wait,
)
from chargeback_plugins.confluent_cloud.errors import CCloudApiError, CCloudConnectionError
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import Fault, StandInServer
from tests.ccloud_support import API_KEY, API_SECRET, SAMPLE_ORG

SA_PATH = "/iam/v2/service-accounts"


@pytest.fixture(scope="module")
def organisation() -> RecordedOrganisation:
    return RecordedOrganisation.from_dir(SAMPLE_ORG)


@pytest.fixture
def server(organisation: RecordedOrganisation) -> Iterator[StandInServer]:
    with StandInServer(organisation, credentials=(API_KEY, API_SECRET)) as running:
        yield running


class Sleeps(list[float]):
    """A ``sleep`` that records the requested waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def client_for(server: StandInServer, sleeps: Sleeps, **kwargs: object) -> CCloudClient:
    options: dict[str, object] = {"request_interval_seconds": 0, "sleep": sleeps, "rng": random.Random(7)}
    options.update(kwargs)
    return CCloudClient(server.url, API_KEY, API_SECRET, **options)  # type: ignore[arg-type]


def all_service_accounts(organisation: RecordedOrganisation) -> list[str]:
    return [item["id"] for item in organisation.responses[SA_PATH]["data"]]


# --- pagination ---------------------------------------------------------------------------


def test_listing_follows_page_tokens_and_keeps_caller_params(
    server: StandInServer, sleeps: Sleeps, organisation: RecordedOrganisation
) -> None:
    with client_for(server, sleeps) as client:
        ids = [item["id"] for item in client.list(SA_PATH, page_size=5)]
    assert ids == all_service_accounts(organisation)  # 12 accounts → pages of 5, 5, 2
    pages = [r for r in server.requests if r.path == SA_PATH]
    assert [r.params.get("page_token") for r in pages] == [None, "t5", "t10"]
    assert all(r.params["page_size"] == "5" for r in pages)
    assert all(r.authorized for r in pages)


def test_caller_params_win_over_the_default_page_size(server: StandInServer, sleeps: Sleeps) -> None:
    with client_for(server, sleeps) as client:
        items = list(client.list("/cmk/v2/clusters", {"environment": "env-9svye", "page_size": 1}))
    assert len(items) == 2
    first = next(r for r in server.requests if r.path == "/cmk/v2/clusters")
    assert first.params == {"page_size": "1", "environment": "env-9svye"}


def test_next_url_is_never_fetched_only_its_token(
    server: StandInServer, sleeps: Sleeps, organisation: RecordedOrganisation
) -> None:
    # The first page names a foreign host in metadata.next; only its token may be used,
    # sent to the configured base URL with the same path and parameters.
    first_page = {
        "data": [{"id": "sa-first"}],
        "metadata": {"next": "https://elsewhere.example/x?page_token=t10"},
    }
    server.inject(SA_PATH, Fault(status=200, body=first_page))
    with client_for(server, sleeps) as client:
        ids = [item["id"] for item in client.list(SA_PATH, page_size=5)]
    assert ids == ["sa-first", *all_service_accounts(organisation)[10:]]
    assert [r.params for r in server.requests] == [
        {"page_size": "5"},
        {"page_size": "5", "page_token": "t10"},
    ]


def test_a_repeated_page_token_is_a_pagination_loop(server: StandInServer, sleeps: Sleeps) -> None:
    page = {"data": [{"id": "x"}], "metadata": {"next": "/iam/v2/service-accounts?page_token=again"}}
    server.inject(SA_PATH, Fault(status=200, body=page), Fault(status=200, body=page))
    with client_for(server, sleeps) as client, pytest.raises(CCloudApiError, match="pagination loop"):
        list(client.list(SA_PATH))


def test_a_next_url_without_token_ends_the_listing(server: StandInServer, sleeps: Sleeps) -> None:
    page = {"data": [{"id": "only"}], "metadata": {"next": "https://api.example/iam/v2/service-accounts?x=1"}}
    server.inject(SA_PATH, Fault(status=200, body=page))
    with client_for(server, sleeps) as client:
        assert [item["id"] for item in client.list(SA_PATH)] == ["only"]


def test_null_data_yields_nothing(server: StandInServer, sleeps: Sleeps) -> None:
    server.inject(SA_PATH, Fault(status=200, body={"data": None, "metadata": {}}))
    with client_for(server, sleeps) as client:
        assert list(client.list(SA_PATH)) == []


def test_404_listing_is_empty_and_raw_call_is_an_empty_object(server: StandInServer, sleeps: Sleeps) -> None:
    with client_for(server, sleeps) as client:
        assert list(client.list("/iam/v2/identity-providers/op-nope/identity-pools")) == []
        assert client.get_raw("/connect/v1/environments/env-x/clusters/lkc-x/connectors") == {}
    assert sleeps == []


def test_raw_call_sends_only_the_callers_params(server: StandInServer, sleeps: Sleeps) -> None:
    path = "/connect/v1/environments/env-9svye/clusters/lkc-axi3p/connectors"
    with client_for(server, sleeps) as client:
        body = client.get_raw(path, {"expand": "info,status,id"})
    assert list(body) == ["connector-001"]
    assert server.requests[-1].params == {"expand": "info,status,id"}


# --- retries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "low", "high"),
    [
        ("Retry-After", "7.5", 7.5 * 1.1, 7.5 * 1.2),
        ("RateLimit-Reset", "4", 4 * 1.1, 4 * 1.2),
        ("ratelimit-reset", "0.2", 1.1, 1.2),  # case-insensitive; at least 1 s before the factor
        ("X-RateLimit-Reset", "1000012", 12 * 1.1, 12 * 1.2),  # epoch → 12 s from the injected clock
        ("Retry-After", "900", 300, 300),  # capped at 300 s
    ],
)
def test_429_waits_for_the_rate_limit_header(
    server: StandInServer, sleeps: Sleeps, header: str, value: str, low: float, high: float
) -> None:
    server.inject(SA_PATH, Fault(status=429, headers={header: value}))
    with client_for(server, sleeps, clock=lambda: 1_000_000.0) as client:
        items = list(client.list(SA_PATH))
    assert len(items) == 12
    assert len(sleeps) == 1
    assert low <= sleeps[0] <= high


def test_first_rate_limit_header_present_wins(server: StandInServer, sleeps: Sleeps) -> None:
    server.inject(
        SA_PATH,
        Fault(
            status=429, headers={"X-RateLimit-Reset": "1000100", "Retry-After": "2", "RateLimit-Reset": "50"}
        ),
    )
    with client_for(server, sleeps, clock=lambda: 1_000_000.0) as client:
        list(client.list(SA_PATH))
    assert 2 * 1.1 <= sleeps[0] <= 2 * 1.2


def test_429_without_headers_uses_the_backoff(server: StandInServer, sleeps: Sleeps) -> None:
    server.inject(SA_PATH, Fault(status=429), Fault(status=429))
    with client_for(server, sleeps) as client:
        list(client.list(SA_PATH))
    # b0 = 2 + U(0,1) ∈ [2, 3], b1 = 4 + U(0,1) ∈ [4, 5]; then × U(1.1, 1.2)
    assert 2 * 1.1 <= sleeps[0] <= 3 * 1.2
    assert 4 * 1.1 <= sleeps[1] <= 5 * 1.2


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retried_with_exponential_backoff(
    server: StandInServer, sleeps: Sleeps, status: int
) -> None:
    server.inject(SA_PATH, Fault(status=status), Fault(status=status), Fault(status=status))
    with client_for(server, sleeps) as client:
        assert len(list(client.list(SA_PATH))) == 12
    assert len(sleeps) == 3
    for k, wait in enumerate(sleeps):
        assert 2.0 * 2**k <= wait <= 2.0 * 2**k + 1


def test_timeout_then_success(server: StandInServer, sleeps: Sleeps) -> None:
    server.inject(SA_PATH, Fault(delay=1.0))
    with client_for(server, sleeps, timeout_seconds=0.2) as client:
        assert len(list(client.list(SA_PATH))) == 12
    assert len(sleeps) == 1 and 2 <= sleeps[0] <= 3
    assert sum(1 for r in server.requests if r.path == SA_PATH) == 2  # the timed-out attempt and its retry


def test_dropped_connection_then_success(server: StandInServer, sleeps: Sleeps) -> None:
    server.inject(SA_PATH, Fault(drop=True))
    with client_for(server, sleeps) as client:
        assert len(list(client.list(SA_PATH))) == 12
    assert len(sleeps) == 1


def test_refused_connection_is_retried_then_raises(sleeps: Sleeps) -> None:
    from tests.prometheus_support import free_port

    client = CCloudClient(
        f"http://127.0.0.1:{free_port()}", API_KEY, API_SECRET, request_interval_seconds=0, sleep=sleeps
    )
    with client, pytest.raises(CCloudConnectionError, match="ConnectError"):
        list(client.list(SA_PATH))
    assert len(sleeps) == 5  # six attempts, no sleep after the last


def test_exhausted_retries_raise_the_last_error_without_a_final_sleep(
    server: StandInServer, sleeps: Sleeps
) -> None:
    server.inject(SA_PATH, *[Fault(status=503, body={"detail": "busy"})] * 6)
    with client_for(server, sleeps) as client, pytest.raises(CCloudApiError) as raised:
        list(client.list(SA_PATH))
    assert raised.value.status == 503
    assert "busy" in str(raised.value)
    assert len(sleeps) == 5
    assert [round(w) >= 2 * 2**k for k, w in enumerate(sleeps)] == [True] * 5
    assert server.pending_faults() == 0


@pytest.mark.parametrize("status", [400, 401, 403, 409, 302])
def test_other_statuses_fail_at_once(server: StandInServer, sleeps: Sleeps, status: int) -> None:
    server.inject(SA_PATH, Fault(status=status, body={"detail": "nope"}))
    with client_for(server, sleeps) as client, pytest.raises(CCloudApiError) as raised:
        list(client.list(SA_PATH))
    assert raised.value.status == status
    assert sleeps == []


def test_wrong_credentials_are_an_error_naming_no_secret(server: StandInServer, sleeps: Sleeps) -> None:
    client = CCloudClient(server.url, API_KEY, "wrong-secret-XYZ", request_interval_seconds=0, sleep=sleeps)
    with client, pytest.raises(CCloudApiError) as raised:
        list(client.list(SA_PATH))
    assert raised.value.status == 401
    assert "wrong-secret-XYZ" not in str(raised.value)


def test_errors_and_logs_never_contain_the_secret(
    server: StandInServer, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"detail": f"bad request from {API_SECRET}"}
    server.inject(SA_PATH, Fault(status=500, body=echo), Fault(status=400, body=echo))
    with client_for(server, sleeps) as client, pytest.raises(CCloudApiError) as raised:
        list(client.list(SA_PATH))
    assert API_SECRET not in str(raised.value)
    assert "**********" in str(raised.value)
    assert API_SECRET not in caplog.text
    assert "Authorization" not in caplog.text


@pytest.mark.outcome("secret-echoed-by-vendor")
def test_echoed_credentials_are_masked_in_every_spelling_and_across_the_cut(
    server: StandInServer, sleeps: Sleeps
) -> None:
    # A secret whose URL-encoded spelling differs from the raw one.
    secret = "s3cr/t+Zq9=&NEVER SHOWN"
    header = base64.b64encode(f"{API_KEY}:{secret}".encode()).decode()
    forms = (secret, header, quote(secret, safe=""), quote_plus(secret), secret[:12], header[:12])
    echoes = [
        {"detail": f"Authorization: Basic {header}"},  # a gateway echoing the request header
        {"detail": f"rejected ?secret={quote_plus(secret)}"},  # … or the query it thinks it got
        {"detail": "x" * (BODY_EXCERPT - 30) + secret},  # the secret straddles the excerpt's cut
    ]
    for echo in echoes:
        server.inject(SA_PATH, Fault(status=401, body=echo))
        client = CCloudClient(server.url, API_KEY, secret, request_interval_seconds=0, sleep=sleeps)
        with client, pytest.raises(CCloudApiError) as raised:
            list(client.list(SA_PATH))
        text = str(raised.value)
        assert raised.value.status == 401 and "**********" in text, text
        assert [form for form in forms if form in text] == [], text
    assert len(server.requests) == 3


def test_throttle_spaces_logical_calls_but_not_retries(server: StandInServer, sleeps: Sleeps) -> None:
    server.inject(SA_PATH, Fault(status=500))
    with client_for(server, sleeps, request_interval_seconds=30.0) as client:
        list(client.list(SA_PATH))  # first call: no spacing; its retry: only the backoff
        list(client.list(SA_PATH))  # second call: waits ≈ 30 s after the first answer
    assert len(sleeps) == 2
    assert 2 <= sleeps[0] <= 3  # the retry's backoff, not the throttle
    assert 20 < sleeps[1] <= 30


def test_backoff_and_rate_limit_formulas() -> None:
    rng = random.Random(1)
    for k in range(8):
        b = backoff_seconds(k, rng)
        assert min(60.0, 2.0 * 2**k) <= b <= min(60.0, 2.0 * 2**k + 1)
    assert rate_limited_wait(0.0, 0, rng) >= 1.1  # never less than 1 s × 1.1
    assert rate_limited_wait(10_000.0, 0, rng) == 300.0
