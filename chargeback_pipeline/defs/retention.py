"""The retention job: one run per tenant (partitioned by tenant), scheduled daily.

Each run opens the tenant's store under its lock, so it never overlaps a pipeline run of
the same tenant; the run queue's ``tenant`` limit keeps it from even starting while one
is in progress. A failure is the tenant's own run; other tenants are unaffected.
"""

import dagster as dg

from chargeback_pipeline import clock, retention
from chargeback_pipeline.defs.resources import PluginRuntimes, TenantStorage
from chargeback_pipeline.run_queue import RETENTION_JOB


def build_retention_job(tenant_names: list[str]) -> dg.JobDefinition:
    tenants = dg.StaticPartitionsDefinition(sorted(tenant_names))

    @dg.op(out=dg.Out(dg.Nothing))
    def purge_expired_data(
        context: dg.OpExecutionContext, plugin_runtimes: PluginRuntimes, tenant_storage: TenantStorage
    ) -> dg.Output[None]:
        """Delete the tenant's data older than its ``retention_days`` and report what went."""
        tenant = context.partition_key
        with tenant_storage.session(tenant, plugin_runtimes) as session:
            result = retention.purge_tenant(session, clock.utc_now())
        context.log.info(result.describe())
        return dg.Output(
            None,
            metadata={
                "tenant": tenant,
                "first_kept_date": result.first_kept_date.isoformat(),
                "entities_deleted_before": result.entities_deleted_before.isoformat(),
                "rows_removed": result.total,
                "removed_by_table": dg.MetadataValue.json(result.removed),
            },
        )

    @dg.job(
        name=RETENTION_JOB,
        partitions_def=tenants,
        description="Removes each tenant's data older than its retention_days (operations.md §13).",
    )
    def retention_job() -> None:
        purge_expired_data()

    return retention_job
