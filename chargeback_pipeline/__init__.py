"""Cost chargeback engine as a Dagster pipeline: the plugin-agnostic core and the Dagster definitions."""

__version__ = "0.1.0"
