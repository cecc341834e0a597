"""The plugin's PromQL, exactly as spec/self-managed-kafka.md §3 lists it.

``resource_label`` stays ``None`` everywhere: these are cluster-wide JMX metrics, so the
core must never inject a resource filter (the ``{}`` of the discovery query is removed).
"""

from __future__ import annotations

from chargeback_pipeline.models import MetricQuery

BYTES_IN = "kafka_server_brokertopicmetrics_bytesin_total"
BYTES_OUT = "kafka_server_brokertopicmetrics_bytesout_total"
LOG_SIZE = "kafka_log_log_size"

CLUSTER_BYTES_IN = MetricQuery(key="cluster_bytes_in", query_expression=f"sum(increase({BYTES_IN}[1h]))")
CLUSTER_BYTES_OUT = MetricQuery(key="cluster_bytes_out", query_expression=f"sum(increase({BYTES_OUT}[1h]))")
CLUSTER_STORAGE_BYTES = MetricQuery(key="cluster_storage_bytes", query_expression=f"sum({LOG_SIZE})")
COST_QUERIES = (CLUSTER_BYTES_IN, CLUSTER_BYTES_OUT, CLUSTER_STORAGE_BYTES)

COMBINED_DISCOVERY = MetricQuery(
    key="combined_discovery",
    query_expression=f"group by (broker, topic, principal) ({BYTES_IN}{{}})",
    label_keys=("broker", "topic", "principal"),
)

BYTES_IN_PER_PRINCIPAL = MetricQuery(
    key="bytes_in_per_principal",
    query_expression=f"sum by (principal) (increase({BYTES_IN}[1h]))",
    label_keys=("principal",),
)
BYTES_OUT_PER_PRINCIPAL = MetricQuery(
    key="bytes_out_per_principal",
    query_expression=f"sum by (principal) (increase({BYTES_OUT}[1h]))",
    label_keys=("principal",),
)
USAGE_QUERIES = [BYTES_IN_PER_PRINCIPAL, BYTES_OUT_PER_PRINCIPAL]
