#!/usr/bin/env bash
# Set up and run the slow suite (fault injection at scale, load): tests marked `slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh
bash scripts/setup.sh
.venv/bin/python -m pytest -q --slow "$@"
