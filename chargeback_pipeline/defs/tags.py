"""Run tags the pipeline sets and reads.

``tenant`` is what the run queue limits per unique value (dagster.yaml); every launcher
sets it, and the run coordinator derives it for runs launched without it (UI backfills).
``chargeback/refresh`` marks runs requested by the refresh schedule: only those may
skip dates whose inputs did not change; a manual run always recalculates and re-emits.
"""

TENANT_TAG = "tenant"
TENANTS_TAG = "chargeback/tenants"
REFRESH_TAG = "chargeback/refresh"
PARTITION_TENANT_TAG = "dagster/partition/tenant"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
MAX_RUNTIME_TAG = "dagster/max_runtime"
