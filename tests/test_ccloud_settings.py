"""Settings of the confluent_cloud plugin (spec/confluent-cloud.md §1, config.md §5–§6)."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from chargeback_pipeline.config import load_config, resolved_settings
from chargeback_pipeline.errors import PluginConfigError
from chargeback_plugins.confluent_cloud.plugin import ConfluentCloudPlugin
from chargeback_plugins.confluent_cloud.settings import CCloudSettings


def settings(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"ccloud_api": {"key": "K", "secret": "S"}}
    for key, value in overrides.items():
        if key.startswith("api_"):
            raw["ccloud_api"][key.removeprefix("api_")] = value
        else:
            raw[key] = value
    return raw


def parse(raw: dict[str, Any]) -> CCloudSettings:
    ConfluentCloudPlugin().validate_settings(raw)
    return CCloudSettings.model_validate(raw)


def test_defaults() -> None:
    parsed = parse(settings())
    assert parsed.ccloud_api.base_url == "https://api.confluent.cloud"
    assert parsed.ccloud_api.flink_base_url == "https://flink.{region}.{cloud}.confluent.cloud"
    assert parsed.billing_api.days_per_query == 15
    assert parsed.metrics is None and parsed.flink == [] and parsed.allocator_params == {}
    assert parsed.ccloud_api.timeout_seconds == 30.0
    assert parsed.ccloud_api.request_interval_seconds == 0.1


def test_base_url_keeps_its_path_prefix_without_the_trailing_slash() -> None:
    parsed = parse(settings(api_base_url="http://127.0.0.1:8080/vendor/ccloud/"))
    assert parsed.ccloud_api.base_url == "http://127.0.0.1:8080/vendor/ccloud"


def test_flink_template_without_placeholders_is_used_for_every_region() -> None:
    assert parse(settings(api_flink_base_url="http://127.0.0.1:8081")).ccloud_api.flink_base_url == (
        "http://127.0.0.1:8081"
    )


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"billing_api": {}}, "ccloud_api", "Field required"),
        (settings(api_key=""), "ccloud_api.key", "must not be empty"),
        (settings(api_key="   "), "ccloud_api.key", "must not be empty"),
        (settings(api_secret=""), "ccloud_api.secret", "must not be empty"),
        (settings(api_base_url="ftp://example.com"), "ccloud_api.base_url", "http:// or https://"),
        (settings(api_base_url="https://user:pw@example.com"), "ccloud_api.base_url", "no credentials"),
        (
            settings(api_flink_base_url="https://flink.{zone}.x"),
            "ccloud_api.flink_base_url",
            "only the placeholders",
        ),
        (settings(api_flink_base_url="https://flink.{region.x"), "ccloud_api.flink_base_url", "braces"),
        (
            settings(billing_api={"days_per_query": 0}),
            "billing_api.days_per_query",
            "greater than or equal to 1",
        ),
        (
            settings(billing_api={"days_per_query": 31}),
            "billing_api.days_per_query",
            "less than or equal to 30",
        ),
        (
            settings(
                flink=[
                    {"region_id": "AWS.us-east-1 ", "key": "k", "secret": "s"},
                    {"region_id": "aws.us-east-1", "key": "k2", "secret": "s2"},
                ]
            ),
            "flink",
            "duplicate region_id 'aws.us-east-1'",
        ),
        (settings(flink=[{"region_id": "us-east-1", "key": "k", "secret": ""}]), "flink.0.secret", "empty"),
        (settings(allocator_params={"kafka_cku_usage_ratio": True}), "allocator_params", "must be a number"),
        (settings(allocator_params={"kafka_cku_usage_ratio": "0.7"}), "allocator_params", "must be a number"),
        (settings(allocator_params={"my_ratio": False}), "allocator_params", "'my_ratio' must be a number"),
        (settings(allocator_params={"kafka_cku_usage_ratio": 0.6}), "allocator_params", "must be 1 within"),
        (
            settings(allocator_params={"kafka_cku_usage_ratio": 0.5, "kafka_cku_shared_ratio": 0.4}),
            "allocator_params",
            "got 0.9",
        ),
    ],
)
def test_invalid_settings(raw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(PluginConfigError) as raised:
        ConfluentCloudPlugin().validate_settings(raw)
    assert raised.value.field == field
    assert message in raised.value.reason


@pytest.mark.parametrize(
    "params",
    [
        {"kafka_cku_usage_ratio": 0.8, "kafka_cku_shared_ratio": 0.2},
        {"kafka_cku_usage_ratio": 0.70005},  # + default 0.30 is within 0.0001 of 1
        {"kafka_cku_shared_ratio": 0.3, "other": "text is fine for non-ratio keys"},
        {"kafka_cku_usage_ratio": 1, "kafka_cku_shared_ratio": 0},
    ],
)
def test_valid_cku_ratios(params: dict[str, Any]) -> None:
    assert parse(settings(allocator_params=params)).allocator_params == params


def test_flink_credentials_match_region_and_prefer_the_qualified_entry() -> None:
    parsed = parse(
        settings(
            flink=[
                {"region_id": " US-East-1", "key": "bare", "secret": "s"},
                {"region_id": "gcp.us-east-1", "key": "gcp", "secret": "s"},
                {"region_id": "azure.westeurope", "key": "az", "secret": "s"},
            ]
        )
    )
    assert [(r.cloud, r.region) for r in parsed.flink] == [
        (None, "us-east-1"),
        ("gcp", "us-east-1"),
        ("azure", "westeurope"),
    ]
    key = {
        pair: (found.key if found else None)
        for pair in [
            ("gcp", "us-east-1"),
            ("aws", "us-east-1"),
            ("azure", "westeurope"),
            ("aws", "westeurope"),
            ("aws", "eu-west-1"),
        ]
        for found in [parsed.flink_credentials_for(*pair)]
    }
    assert key == {
        ("gcp", "us-east-1"): "gcp",
        ("aws", "us-east-1"): "bare",
        ("azure", "westeurope"): "az",
        ("aws", "westeurope"): None,
        ("aws", "eu-west-1"): None,
    }


def test_unknown_keys_and_topic_attribution_warn_and_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    raw = settings(
        topic_attribution={"enabled": True}, colour="blue", billing_api={"days_per_query": 3, "x": 1}
    )
    raw["ccloud_api"]["base_ur"] = "typo"
    plugin = ConfluentCloudPlugin()
    with caplog.at_level(logging.WARNING):
        plugin.initialize(raw)
    plugin.close()
    assert "topic_attribution is not part of this version; ignored" in caplog.text
    for path in (
        "plugin_settings.colour",
        "plugin_settings.ccloud_api.base_ur",
        "plugin_settings.billing_api.x",
    ):
        assert f"{path} is not a confluent_cloud setting; ignored" in caplog.text


# --- through the config file ------------------------------------------------------------------


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def test_config_file_errors_name_tenant_and_field_without_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tenants:
          cc:
            ecosystem: confluent_cloud
            tenant_id: acme
            plugin_settings:
              ccloud_api: {key: K, secret: "", base_url: "gopher://secret-host-name"}
          ok:
            ecosystem: confluent_cloud
            tenant_id: ok
            plugin_settings: {ccloud_api: {key: K, secret: "${CC_SECRET:-s3cr3t-value}"}}
        """,
    )
    loaded = load_config(path)
    assert loaded.tenant_errors["cc"] == [
        f"{path}: tenant 'cc': plugin_settings.ccloud_api.secret: must not be empty (and 1 more problem(s))"
    ]
    assert "secret-host-name" not in json.dumps(loaded.tenant_errors)
    assert list(loaded.tenants) == ["ok"]


def test_secrets_are_masked_and_literal_secrets_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC_SECRET", "from-env-Pq8")
    path = write(
        tmp_path,
        """
        tenants:
          cc:
            ecosystem: confluent_cloud
            tenant_id: acme
            plugin_settings:
              ccloud_api: {key: K, secret: "${CC_SECRET}"}
              flink: [{region_id: us-east-1, key: FK, secret: literal-Flink-Zz1}]
        """,
    )
    loaded = load_config(path)
    shown = json.dumps(resolved_settings(loaded))
    assert "from-env-Pq8" not in shown and "literal-Flink-Zz1" not in shown
    assert shown.count("**********") == 2
    warning = [w for w in loaded.warnings if "flink.0.secret" in w]
    assert warning and "literal" in warning[0] and "literal-Flink-Zz1" not in warning[0]
    assert not [w for w in loaded.warnings if "ccloud_api.secret" in w]


def test_replay_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        tenants:
          cc:
            ecosystem: confluent_cloud
            tenant_id: acme
            plugin_settings:
              ccloud_api: {key: K, secret: "${X:-s}", replay: {dir: recordings/org}}
          absolute:
            ecosystem: confluent_cloud
            tenant_id: abs
            storage: {path: data/abs.duckdb}
            plugin_settings:
              ccloud_api: {key: K, secret: "${X:-s}", replay: {dir: /srv/recordings}}
        """,
    )
    loaded = load_config(path)
    replay = loaded.tenants["cc"].plugin_settings_dict()["ccloud_api"]["replay"]
    assert replay["dir"] == str(tmp_path / "recordings" / "org")
    assert (
        loaded.tenants["absolute"].plugin_settings_dict()["ccloud_api"]["replay"]["dir"] == "/srv/recordings"
    )
