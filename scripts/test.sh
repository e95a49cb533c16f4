#!/usr/bin/env bash
# Installs everything into ./.venv (idempotent) and runs the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cpu
exec .venv/bin/python -m pytest -q "$@"
