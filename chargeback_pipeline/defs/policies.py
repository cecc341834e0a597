"""How the lifecycle assets are launched: backfill policy and declarative automation.

* **Backfill policy** ``single_run`` on every asset: a backfill of a tenant's dates runs
  as one run per tenant (Dagster groups a selection by the dimension with fewer keys,
  spec/dagster-notes.md §2) instead of one run per day. Inside the run each step loops
  over the dates in process, oldest first, and reports metadata per partition.
* **Automation** on the emitter sinks: ``eager`` without the "latest time window"
  restriction, so a sink partition is materialised again whenever its ``chargebacks``
  partition is, for old dates too (a re-materialised chargeback from the UI, or a
  backfill of ``chargebacks`` alone). Sinks materialised in the same run as their
  chargebacks are not requested again.
"""

from __future__ import annotations

import dagster as dg

BACKFILL_POLICY = dg.BackfillPolicy.single_run()
SINK_AUTOMATION = dg.AutomationCondition.eager().without(dg.AutomationCondition.in_latest_time_window())


def with_backfill_policy(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    return asset.with_attributes(backfill_policy=BACKFILL_POLICY)


def as_sink(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    return asset.with_attributes(backfill_policy=BACKFILL_POLICY, automation_condition=SINK_AUTOMATION)
