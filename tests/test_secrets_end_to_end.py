"""Secrets never leave the process: every place a run leaves text behind, scanned for them.

One deployment as an operator runs it: the demo tenants, a Confluent Cloud tenant on the
stand-in API (real HTTP, Basic auth with an API key and a Flink key), a metrics tenant
on a real Prometheus with basic auth and one with a bearer token, plus two metrics
tenants behind a gateway that echoes the ``Authorization`` header it received. All
credentials come from recognisable fake values in environment variables.

What runs: ``chargeback run -v`` (a good run of every healthy tenant, then a failing run
where the stand-in answers 401 with the secret and the Basic header in its body and the
gateway answers 401 echoing the header), ``chargeback show-config``, then ``dagster dev``
on the same instance, which executes one more failing run through the daemon and answers
the UI's GraphQL (runs and their run config, event logs, materialisations with metadata,
check results, resources and their config, partition status, instance info).

What is scanned, for every secret raw, URL-encoded, base64, and as the base64 of
``key:secret`` (the Basic header): the subprocesses' stdout and stderr, every file under
``DAGSTER_HOME`` (SQLite run and event storage, compute logs, the ``dagster dev`` log),
every output file (CSV, ``.om``, ``.prom``), the DuckDB stores as bytes *and* as the text
of every table, and every GraphQL response.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import duckdb
import httpx
import pytest
import yaml

from chargeback_pipeline.definitions import PIPELINE_JOB
from chargeback_plugins.confluent_cloud.recorded import RecordedOrganisation
from chargeback_plugins.confluent_cloud.standin import Fault, StandInServer
from tests.ccloud_support import SAMPLE_ORG, tenant_yaml
from tests.dagster_dev import LOCATION, DagsterDev, dagster_dev
from tests.prometheus_stub import Received, Reply, StubPrometheus, running_stub
from tests.prometheus_support import PrometheusServer
from tests.sample_org import FROZEN_NOW, tenant_block

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo"
CHARGEBACK = Path(sys.executable).parent / "chargeback"

# Recognisable, and with characters that URL-encoding and base64 spell differently.
CCLOUD_KEY, CCLOUD_SECRET = "CCKEY7TEST", "ccSECRET-9f3Q/zz+Kq=lemon&tart"
FLINK_KEY, FLINK_SECRET = "FLKEY3TEST", "flSECRET-27Xw/pp+Rt=mango&lassi"
PROM_USER, PROM_PASSWORD = "chargeback", "pmPASSWD-81Lk/qq+Zx=peach&melba"
PROM_TOKEN = "pmTOKEN-44Hv/rr+Yb=guava&jelly"
ENV = {
    "CCLOUD_API_KEY": CCLOUD_KEY,
    "CCLOUD_API_SECRET": CCLOUD_SECRET,  # also the demo Confluent Cloud tenant's secret
    "FLINK_KEY": FLINK_KEY,
    "FLINK_SECRET": FLINK_SECRET,
    "FLINK_API_SECRET": FLINK_SECRET,  # the demo tenant's Flink secret
    "PROM_PASSWORD": PROM_PASSWORD,
    "PROM_TOKEN": PROM_TOKEN,
    "CHARGEBACK_NOW": FROZEN_NOW,
}
GOOD_TENANTS = [
    "ccloud-small",
    "confluent-cloud",
    "postgres-prod",
    "prom-basic",
    "prom-bearer",
    "redis-cache",
]
GOOD_DATES = ("2026-03-06", "2026-03-07")
FAILING_DATE = "2026-03-05"
DAEMON_DATE = "2026-03-04"
RUN_TIMEOUT_S = 300


def forbidden_forms() -> dict[str, str]:
    """Every spelling of every secret that must never appear, named for the failure message."""
    forms: dict[str, str] = {}
    for name, secret in {
        "ccloud secret": CCLOUD_SECRET,
        "flink secret": FLINK_SECRET,
        "prometheus password": PROM_PASSWORD,
        "prometheus token": PROM_TOKEN,
    }.items():
        forms[secret] = f"{name} (raw)"
        forms[quote(secret, safe="")] = f"{name} (URL-encoded)"
        forms[quote_plus(secret)] = f"{name} (form-encoded)"
        forms[base64.b64encode(secret.encode()).decode()] = f"{name} (base64)"
    for name, (user, secret) in {
        "ccloud": (CCLOUD_KEY, CCLOUD_SECRET),
        "flink": (FLINK_KEY, FLINK_SECRET),
        "prometheus": (PROM_USER, PROM_PASSWORD),
    }.items():
        forms[base64.b64encode(f"{user}:{secret}".encode()).decode()] = f"{name} Basic header"
    return forms


FORMS = forbidden_forms()


class Scan:
    """Everything looked at, and every secret found in it."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.leaks: list[str] = []

    def text(self, where: str, text: str) -> None:
        self.data(where, text.encode("utf-8", errors="replace"))

    def data(self, where: str, data: bytes) -> None:
        self.sources.append(where)
        for form, name in FORMS.items():
            if form.encode() in data:
                at = data.index(form.encode())
                context = data[max(0, at - 80) : at + len(form) + 20].decode("utf-8", errors="replace")
                self.leaks.append(f"{name} in {where}: …{context}…")

    def tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.data(str(path.relative_to(root.parent)), path.read_bytes())

    def duckdb_tables(self, path: Path) -> None:
        """The store's rows as text: DuckDB compresses columns, so its bytes alone could hide a value."""
        with duckdb.connect(str(path), read_only=True) as conn:
            tables = [
                row[0] for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
            ]
            for table in tables:
                rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
                self.text(f"{path.name}:{table}", repr(rows))


def gateway_echo(received: list[str]) -> Any:
    """A gateway in front of Prometheus that rejects everything, echoing the header it got."""

    def respond(request: Received) -> Reply:
        auth = request.headers.get("authorization", "")
        received.append(auth)
        return Reply(
            401, json.dumps({"error": f"denied for Authorization: {auth}", "query": request.body.decode()})
        )

    return respond


def build_config(workdir: Path, standin: str, prometheus: str, gateway: str) -> Path:
    """The demo's tenants plus the Confluent Cloud, Prometheus and gateway tenants."""
    config = yaml.safe_load((DEMO / "config.yaml").read_text(encoding="utf-8"))
    config["features"]["enable_periodic_refresh"] = False  # only the runs this test starts
    shutil.copytree(DEMO / "ccloud", workdir / "ccloud")
    emitters = [
        {"type": "csv", "params": {"output_dir": "out/csv", "filename_template": "{tenant_name}/{date}.csv"}},
        {"type": "prometheus", "params": {"output_dir": "out/metrics"}},
    ]
    ccloud = yaml.safe_load(tenant_yaml(standin, tenant="ccloud-small"))["tenants"]["ccloud-small"]
    ccloud["plugin_settings"]["emitters"] = emitters
    tenants = config["tenants"]
    tenants["ccloud-small"] = ccloud
    basic = {"auth_type": "basic", "username": PROM_USER, "password": "${PROM_PASSWORD}"}
    bearer = {"auth_type": "bearer", "bearer_token": "${PROM_TOKEN}"}
    for name, url, auth, ecosystem in [
        ("prom-basic", prometheus, basic, "generic_metrics_only"),
        ("prom-bearer", prometheus, bearer, "self_managed_kafka"),
        ("echo-basic", gateway, basic, "generic_metrics_only"),
        ("echo-bearer", gateway, bearer, "self_managed_kafka"),
    ]:
        block = tenant_block(ecosystem, url)
        block["tenant_id"] = name
        block["plugin_settings"]["metrics"] = {"type": "prometheus", "url": url, "max_attempts": 1, **auth}
        block["plugin_settings"]["emitters"] = emitters
        tenants[name] = block
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def chargeback(
    scan: Scan, label: str, args: list[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(CHARGEBACK), *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    scan.text(f"{label} stdout", result.stdout)
    scan.text(f"{label} stderr", result.stderr)
    return result


@pytest.fixture
def gateway() -> Iterator[tuple[StubPrometheus, list[str]]]:
    received: list[str] = []
    with running_stub() as stub:
        stub.respond = gateway_echo(received)
        yield stub, received


# --- GraphQL, as the UI asks it -----------------------------------------------------------

METADATA = """
fragment Meta on MetadataEntry {
  __typename label description
  ... on TextMetadataEntry { text }
  ... on JsonMetadataEntry { jsonString }
  ... on MarkdownMetadataEntry { mdStr }
  ... on PathMetadataEntry { path }
  ... on UrlMetadataEntry { url }
  ... on IntMetadataEntry { intRepr }
  ... on FloatMetadataEntry { floatRepr }
  ... on TableMetadataEntry { table { records } }
}
"""
ERROR = """
fragment Err on PythonError { message stack className errorChain { error { message stack } } }
"""

RUNS = """
query { runsOrError(limit: 500) { __typename ... on Runs { results {
  runId status jobName runConfigYaml mode tags { key value }
  assetSelection { path } stepKeysToExecute parentRunId rootRunId
} } ... on PythonError { message } } }"""

RUN_LOGS = (
    METADATA
    + ERROR
    + """
query($runId: ID!) { logsForRun(runId: $runId, limit: 10000) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message level stepKey timestamp }
    ... on DisplayableEvent { label description metadataEntries { ...Meta } }
    ... on ExecutionStepFailureEvent { error { ...Err } failureMetadata { metadataEntries { ...Meta } } }
    ... on RunFailureEvent { pipelineRunFailureError: error { ...Err } }
    ... on EngineEvent { engineError: error { ...Err } }
    ... on HookErroredEvent { hookError: error { ...Err } }
    ... on MaterializationEvent { partition assetKey { path } }
    ... on AssetCheckEvaluationEvent { evaluation { checkName partition success
      metadataEntries { ...Meta } } }
  } }
  ... on PythonError { ...Err } } }"""
)

ASSETS = (
    METADATA
    + """
query { assetNodes { assetKey { path } description opName jobNames
  partitionStats { numMaterialized numFailed numPartitions numMaterializing }
  partitionKeysByDimension { name partitionKeys }
  metadataEntries { ...Meta }
  assetMaterializations(limit: 1000) { runId partition timestamp description metadataEntries { ...Meta } }
  configField { configType { key description } }
  requiredResources { resourceKey }
} }"""
)

CHECKS = (
    METADATA
    + """
query($check: String!) {
  assetCheckExecutions(assetKey: {path: ["chargebacks"]}, checkName: $check, limit: 1000) {
  status partition runId evaluation { severity description metadataEntries { ...Meta } } } }"""
)

RESOURCES = f"""
query {{ allTopLevelResourceDetailsOrError(
    repositorySelector: {{repositoryLocationName: "{LOCATION}", repositoryName: "__repository__"}}) {{
  __typename
  ... on ResourceDetailsList {{ results {{ name description resourceType
    configFields {{ name description defaultValueAsJson configType {{ key description }} }}
    configuredValues {{ key value type }} }} }}
  ... on PythonError {{ message }} }} }}"""

JOB = f"""
query {{ pipelineOrError(params: {{repositoryLocationName: "{LOCATION}", repositoryName: "__repository__",
    pipelineName: "{PIPELINE_JOB}"}}) {{ __typename
  ... on Pipeline {{ description tags {{ key value }} metadataEntries {{ __typename label }}
    modes {{ name resources {{ name description configField {{ configType {{ key }} }} }} }} }} }} }}"""

WORKSPACE = """
query { workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  displayMetadata { key value }
  locationOrLoadError { __typename ... on RepositoryLocation { repositories { name
    displayMetadata { key value }
    schedules { name cronSchedule description scheduleState { status } }
    sensors { name description }
    jobs { name description }
  } } ... on PythonError { message } } } } } }"""

INSTANCE = """
query { instance { info runQueuingSupported
  runLauncher { name }
  runQueueConfig { maxConcurrentRuns tagConcurrencyLimitsYaml }
  daemonHealth { allDaemonStatuses { daemonType healthy lastHeartbeatErrors { message stack } } }
} }"""

LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on InvalidSubsetError { message } } }"""

RUN_STATUS = """
query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"""


def launch_partition_run(dev: DagsterDev, tenant: str, day: str) -> str:
    """One partition of the pipeline job, launched through the queue as the UI's *Materialize* does."""
    tags = {
        "dagster/partition": f"{day}|{tenant}",
        "dagster/partition/date": day,
        "dagster/partition/tenant": tenant,
    }
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "jobName": PIPELINE_JOB,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    result = dev.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return str(result["run"]["runId"])


def wait_for_run(dev: DagsterDev, run_id: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = str(dev.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]["status"])
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} not finished after {RUN_TIMEOUT_S}s:\n{dev.log_tail()}")


def ask(
    dev: DagsterDev, scan: Scan, label: str, query: str, variables: Mapping[str, Any] | None = None
) -> Any:
    response = httpx.post(
        f"{dev.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=120
    )
    scan.text(f"GraphQL {label}", response.text)
    assert response.status_code == 200 and not response.json().get("errors"), (label, response.text[:2000])
    return response.json()["data"]


@pytest.mark.slow
@pytest.mark.outcome("secrets-in-logs-and-ui")
@pytest.mark.outcome("secret-echoed-by-vendor")
def test_secrets_never_appear_in_outputs_logs_storage_or_the_ui(
    tmp_path: Path, sample_prometheus: PrometheusServer, gateway: tuple[StubPrometheus, list[str]]
) -> None:
    stub, gateway_saw = gateway
    workdir, home = tmp_path / "deploy", tmp_path / "dagster_home"
    workdir.mkdir()
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CHARGEBACK_CONFIG", "CHARGEBACK_ENV_FILE")},
        **ENV,
        "DAGSTER_HOME": str(home),
    }
    scan = Scan()
    organisation = RecordedOrganisation.from_dir(SAMPLE_ORG)
    credentials = [(CCLOUD_KEY, CCLOUD_SECRET), (FLINK_KEY, FLINK_SECRET)]
    with StandInServer(organisation, credentials=credentials) as standin:
        config = build_config(workdir, standin.url, sample_prometheus.url, stub.url)
        common = ["--config", str(config)]

        shown = chargeback(scan, "show-config", ["show-config", str(config)], env)
        assert shown.returncode == 0 and shown.stdout.count("**********") >= 8, shown.stdout + shown.stderr

        tenants = [arg for t in GOOD_TENANTS for arg in ("--tenant", t)]
        good = chargeback(
            scan,
            "good run",
            ["run", "-v", *common, *tenants, "--start", GOOD_DATES[0], "--end", GOOD_DATES[1]],
            env,
        )
        assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
        assert standin.requests and all(r.authorized for r in standin.requests)
        assert any(r.path.startswith("/__host/flink") for r in standin.requests)  # the Flink key was used

        # The vendor rejects the next billing call and echoes the credentials it received.
        header = base64.b64encode(f"{CCLOUD_KEY}:{CCLOUD_SECRET}".encode()).decode()
        said = f"Authorization: Basic {header}; secret={quote_plus(CCLOUD_SECRET)} ({CCLOUD_SECRET})"
        echo = {"error": f"denied: {said}"}
        standin.inject("/billing/v1/costs", Fault(status=401, body=echo))
        failing_tenants = ["--tenant", "ccloud-small", "--tenant", "echo-basic", "--tenant", "echo-bearer"]
        failing = chargeback(
            scan,
            "failing run",
            ["run", "-v", *common, *failing_tenants, "--start", FAILING_DATE, "--end", FAILING_DATE],
            env,
        )
        output = failing.stdout + failing.stderr
        assert failing.returncode == 1, output[-3000:]
        assert "401" in output and "**********" in output, output[-3000:]
        basic_header = base64.b64encode(f"{PROM_USER}:{PROM_PASSWORD}".encode()).decode()
        assert {f"Basic {basic_header}", f"Bearer {PROM_TOKEN}"} <= set(
            gateway_saw
        )  # the echo really happened

        with dagster_dev(config, home, env={**ENV}) as dev:
            # One more failing run, through the queue and a run worker: the vendor answers 403.
            standin.inject("/billing/v1/costs", Fault(status=403, body=echo))
            run_id = launch_partition_run(dev, "ccloud-small", DAEMON_DATE)
            assert wait_for_run(dev, run_id) == "FAILURE", dev.log_tail()

            runs = ask(dev, scan, "runs", RUNS)["runsOrError"]["results"]
            # chargeback run: one range run per good tenant, at least one for the failing
            # tenant (its dates are then retried one by one), and the daemon's run.
            assert len(runs) >= len(GOOD_TENANTS) + 1 + 1
            masked_errors = 0
            for run in runs:
                logs = ask(dev, scan, f"logsForRun {run['runId']}", RUN_LOGS, {"runId": run["runId"]})
                masked_errors += json.dumps(logs).count("**********")
            assert masked_errors > 0  # the echoed credentials reached the event log, masked
            assets = ask(dev, scan, "assetNodes", ASSETS)["assetNodes"]
            materialised = sum(len(a["assetMaterializations"]) for a in assets)
            assert materialised >= len(GOOD_TENANTS) * len(GOOD_DATES) * 5, materialised
            for check in ("chargebacks_reconcile_with_billing", "chargebacks_unallocated_share"):
                executions = ask(dev, scan, f"checks {check}", CHECKS, {"check": check})[
                    "assetCheckExecutions"
                ]
                assert len(executions) >= len(GOOD_TENANTS) * len(GOOD_DATES), check
            resources = ask(dev, scan, "resources", RESOURCES)["allTopLevelResourceDetailsOrError"]
            assert resources["__typename"] == "ResourceDetailsList" and resources["results"], resources
            ask(dev, scan, "job", JOB)
            ask(dev, scan, "workspace", WORKSPACE)
            ask(dev, scan, "instance", INSTANCE)

    scan.tree(home)
    scan.tree(workdir)
    stores = sorted((workdir / "data").glob("*.duckdb"))
    assert len(stores) == len(GOOD_TENANTS) + 2
    for store in stores:
        scan.duckdb_tables(store)
    kinds = {Path(s.split(":")[0]).suffix for s in scan.sources}
    assert {".csv", ".om", ".prom", ".duckdb", ".log"} <= kinds, kinds
    assert any("compute_logs" in s or "/storage/" in s for s in scan.sources), "no compute log was scanned"
    print(f"scanned {len(scan.sources)} texts for {len(FORMS)} spellings of 4 secrets")
    where = sorted({leak.split(": …")[0] for leak in scan.leaks})
    assert scan.leaks == [], "\n".join([*scan.leaks[:10], f"{len(where)} (secret, place) pairs:", *where])
