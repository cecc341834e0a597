#!/usr/bin/env bash
# Set up and run the whole pipeline on the bundled demo organisation.
# CSV files land in examples/demo/out/csv/, the DuckDB stores in examples/demo/data/,
# and the runs in the Dagster instance at the repository root (see `dagster dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD"
exec .venv/bin/chargeback run --config examples/demo/config.yaml "$@"
