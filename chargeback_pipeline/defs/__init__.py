"""Dagster definitions: partitions, resources, assets per lifecycle step, checks."""
