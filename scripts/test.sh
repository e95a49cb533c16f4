#!/usr/bin/env bash
# Installs everything into ./.venv (idempotent), lints with ruff and runs the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cpu
.venv/bin/ruff check .   # lint first: seconds, and a failure says which line
exec .venv/bin/python -m pytest -q "$@"
