"""Shared fixtures: a copy of the bundled demo configuration under a fixed clock."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargeback_pipeline.loader import clear_discovery_cache
from chargeback_pipeline.metrics import clear_response_cache
from tests.prometheus_support import (
    SAMPLE_SERIES,
    PrometheusServer,
    load_series,
    series_to_openmetrics,
    start_prometheus,
)
from tests.sample_org import FROZEN_NOW as SAMPLE_FROZEN_NOW

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "examples" / "demo" / "config.yaml"
EXAMPLE_PLUGINS = REPO / "examples" / "plugins"

# With lookback 8 and cutoff 1 the demo's refresh window is 2026-03-01 .. 2026-03-07.
FROZEN_NOW = "2026-03-09T06:00:00Z"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="run only the slow suite (tests marked slow)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow suite and the fast suite are disjoint: deselect, never skip."""
    want_slow = bool(config.getoption("--slow"))
    keep = [item for item in items if (item.get_closest_marker("slow") is not None) == want_slow]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CHARGEBACK_NOW", FROZEN_NOW)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    clear_discovery_cache()
    yield FROZEN_NOW
    clear_discovery_cache()


@pytest.fixture
def demo_config(tmp_path: Path, frozen_clock: str) -> Path:
    """The demo config copied into a temporary directory (stores and CSVs land beside it)."""
    target = tmp_path / "demo" / "config.yaml"
    target.parent.mkdir()
    shutil.copy(DEMO_CONFIG, target)
    # The Confluent Cloud tenant replays the recording next to the config file.
    shutil.copytree(DEMO_CONFIG.parent / "ccloud", target.parent / "ccloud")
    return target


@pytest.fixture
def sample_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The sample organisation's clock (manifest.json ``frozen_now``), caches cleared."""
    monkeypatch.setenv("CHARGEBACK_NOW", SAMPLE_FROZEN_NOW)
    for name in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    clear_discovery_cache()
    clear_response_cache()
    yield
    clear_discovery_cache()
    clear_response_cache()


@pytest.fixture(scope="session")
def sample_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus holding every series of the sample organisation (2026-03-01 … 03-09)."""
    workdir = tmp_path_factory.mktemp("sample-prometheus")
    with start_prometheus(workdir, series_to_openmetrics(load_series(SAMPLE_SERIES))) as server:
        yield server
