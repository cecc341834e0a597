"""Offline replay of recorded API responses (the demo's Confluent Cloud tenant).

The replay transport answers the plugin's real HTTP client from the recording bundled
in examples/demo/ccloud, so pagination, handlers and billing run unchanged; with
``recorded_now`` the recording is re-dated to end at the latest settled days.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from chargeback_pipeline.models import Resource
from chargeback_pipeline.storage import normalise_lines
from chargeback_plugins.confluent_cloud.client import CCloudClient
from chargeback_plugins.confluent_cloud.plugin import ConfluentCloudPlugin
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation, ReplayTransport
from chargeback_plugins.confluent_cloud.storage import CCloudStorageModule
from tests.ccloud_support import DAYS, TENANT, actual_billing, expected_billing

REPO = Path(__file__).resolve().parent.parent
DEMO_RECORDING = REPO / "examples" / "demo" / "ccloud"
RECORDED_NOW = "2026-03-09T00:00:00Z"


def replay_settings() -> dict[str, object]:
    return {
        "ccloud_api": {
            "key": "offline",
            "secret": "offline",
            "replay": {"dir": str(DEMO_RECORDING), "recorded_now": RECORDED_NOW},
        },
        "flink": [{"region_id": "us-east-1", "key": "offline", "secret": "offline"}],
    }


@pytest.fixture
def plugin_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    plugins: list[ConfluentCloudPlugin] = []

    def start(now: str) -> ConfluentCloudPlugin:
        monkeypatch.setenv("CHARGEBACK_NOW", now)
        plugin = ConfluentCloudPlugin()
        plugin.initialize(replay_settings())
        plugins.append(plugin)
        return plugin

    yield start
    for plugin in plugins:
        plugin.close()


def stored_lines(plugin: ConfluentCloudPlugin, first: date, days: int) -> list[object]:
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    lines = list(plugin.get_cost_input().gather(TENANT, start, start + timedelta(days=days), store=None))  # type: ignore[arg-type]
    factory = CCloudStorageModule().make_billing_line
    by_day: dict[date, list[object]] = {}
    for line in lines:
        by_day.setdefault(line.timestamp.date(), []).append(line)
    return [x for d, group in sorted(by_day.items()) for x in normalise_lines(d, group, ("env_id",), factory)]  # type: ignore[arg-type]


def without_hashes(billing: dict[tuple[str, ...], object]) -> dict[tuple[str, ...], object]:
    def plain(resource_id: str) -> str:
        return "unresolved_billing" if resource_id.startswith("unresolved_billing_") else resource_id

    return {(k[0], k[1], plain(k[2]), *k[3:]): v for k, v in billing.items()}


def test_the_bundled_recording_is_the_sample_organisation() -> None:
    bundled = RecordedOrganisation.from_dir(DEMO_RECORDING)
    sample = RecordedOrganisation.from_dir(REPO / "tests" / "data" / "sample-small" / "ccloud")
    assert bundled.responses == sample.responses and bundled.billing_rows == sample.billing_rows


def test_replay_at_the_recorded_clock_gives_the_sample_billing(plugin_at: object) -> None:
    plugin = plugin_at(RECORDED_NOW)  # type: ignore[operator]
    lines = stored_lines(plugin, DAYS[0], 7)
    assert actual_billing(lines) == expected_billing(DAYS)  # type: ignore[arg-type]


def test_replay_is_re_dated_to_the_pipeline_clock(plugin_at: object) -> None:
    plugin = plugin_at("2026-11-26T01:00:00Z")  # type: ignore[operator]
    shift = timedelta(days=(date(2026, 11, 26) - date(2026, 3, 9)).days)
    lines = stored_lines(plugin, DAYS[0] + shift, 7)
    moved = {
        (key[0], (datetime.fromisoformat(key[1]) - shift).isoformat(), *key[2:]): value
        for key, value in actual_billing(lines).items()  # type: ignore[arg-type]
    }
    # Re-dated rows are different rows, so their content-hash ids differ; everything else is equal.
    assert without_hashes(moved) == without_hashes(expected_billing(DAYS))
    assert not set(moved) & {k for k in expected_billing(DAYS) if k[2].startswith("unresolved_billing_")}
    shared = plugin.build_shared_context(TENANT)
    created = {c.resource_id: c.created_at for c in shared.clusters}
    assert created["lkc-g3tys"] == datetime(2026, 3, 4, 14, tzinfo=UTC) + shift


def test_replay_serves_every_handler_through_the_real_client(plugin_at: object) -> None:
    plugin = plugin_at(RECORDED_NOW)  # type: ignore[operator]
    shared = plugin.build_shared_context(TENANT)
    resources: list[Resource] = []
    identities = []
    for handler in plugin.get_service_handlers().values():
        resources.extend(handler.gather_resources(TENANT, None, shared))  # type: ignore[arg-type]
        identities.extend(handler.gather_identities(TENANT, None))  # type: ignore[arg-type]
    assert len(resources) == 15 and len(identities) == 36
    statements = sorted(r.display_name or "" for r in resources if r.resource_type == "flink_statement")
    assert statements == ["stmt-pool-0-0", "stmt-pool-0-1", "stmt-pool-0-2"]  # regional Flink host


def test_replay_transport_paginates() -> None:
    transport = ReplayTransport(RecordedOrganisation.from_dir(DEMO_RECORDING))
    with CCloudClient(
        "https://api.confluent.cloud", "k", "s", request_interval_seconds=0, transport=transport
    ) as c:
        assert len(list(c.list("/iam/v2/api-keys", page_size=4))) == 19
        assert list(c.list("/iam/v2/identity-providers/op-unknown/identity-pools")) == []
    assert c.request_count == 6  # 5 pages of at most 4 keys, then one 404


def test_a_missing_recording_is_a_settings_error_naming_the_field(tmp_path: Path) -> None:
    from chargeback_pipeline.errors import PluginConfigError

    settings = replay_settings()
    settings["ccloud_api"]["replay"]["dir"] = str(tmp_path / "nowhere")  # type: ignore[index]
    plugin = ConfluentCloudPlugin()
    plugin.validate_settings(settings)  # no file access when only validating
    with pytest.raises(PluginConfigError) as raised:
        plugin.initialize(settings)
    assert raised.value.field == "ccloud_api.replay.dir"
    assert "cannot read a recording" in raised.value.reason
