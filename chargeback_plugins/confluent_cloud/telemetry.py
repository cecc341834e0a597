"""Telemetry queries against Confluent's metrics export in Prometheus (spec/confluent-cloud.md §5).

Values are summed as delivered (each point is a per-interval amount), so no
``rate()``/``increase()`` is applied. The core injects the billed resource's id into
the ``{}`` of each expression, e.g. ``{kafka_id="lkc-9xv1"}``.
"""

from __future__ import annotations

from chargeback_pipeline.models import MetricQuery
from chargeback_plugins.confluent_cloud.chains import (
    BYTES_IN,
    BYTES_OUT,
    FLINK_CFU_FALLBACK,
    FLINK_CFU_PRIMARY,
)

KAFKA_LABELS = ("kafka_id", "principal_id")
FLINK_LABELS = ("compute_pool_id", "flink_statement_name")

BYTES_IN_QUERY = MetricQuery(
    key=BYTES_IN,
    query_expression="sum by (kafka_id, principal_id) (confluent_kafka_server_request_bytes{})",
    label_keys=KAFKA_LABELS,
    resource_label="kafka_id",
    batch_by_resource=True,
)
BYTES_OUT_QUERY = MetricQuery(
    key=BYTES_OUT,
    query_expression="sum by (kafka_id, principal_id) (confluent_kafka_server_response_bytes{})",
    label_keys=KAFKA_LABELS,
    resource_label="kafka_id",
    batch_by_resource=True,
)
FLINK_PRIMARY_QUERY = MetricQuery(
    key=FLINK_CFU_PRIMARY,
    query_expression="sum by (compute_pool_id, flink_statement_name)(confluent_flink_num_cfu{})",
    label_keys=FLINK_LABELS,
    resource_label="compute_pool_id",
    batch_by_resource=True,
)
FLINK_FALLBACK_QUERY = MetricQuery(
    key=FLINK_CFU_FALLBACK,
    query_expression=(
        "sum by (compute_pool_id, flink_statement_name)"
        "(confluent_flink_statement_utilization_cfu_minutes_consumed{})"
    ),
    label_keys=FLINK_LABELS,
    resource_label="compute_pool_id",
    batch_by_resource=True,
)

QUERIES_BY_PRODUCT_TYPE: dict[str, list[MetricQuery]] = {
    "KAFKA_NETWORK_READ": [BYTES_OUT_QUERY],
    "KAFKA_NETWORK_WRITE": [BYTES_IN_QUERY],
    "KAFKA_NUM_CKU": [BYTES_IN_QUERY, BYTES_OUT_QUERY],
    "KAFKA_NUM_CKUS": [BYTES_IN_QUERY, BYTES_OUT_QUERY],
    "FLINK_NUM_CFU": [FLINK_PRIMARY_QUERY, FLINK_FALLBACK_QUERY],
    "FLINK_NUM_CFUS": [FLINK_PRIMARY_QUERY, FLINK_FALLBACK_QUERY],
}


def queries_for(product_type: str) -> list[MetricQuery]:
    """The queries a product type asks for; every other type asks for none."""
    return list(QUERIES_BY_PRODUCT_TYPE.get(product_type, ()))
