#!/usr/bin/env bash
# Installs everything into ./.venv (idempotent) and runs the default training job on this CPU.
# Extra args are Hydra overrides, e.g. `bash scripts/train.sh algorithm=dapo experiment=quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cpu
exec .venv/bin/python -m cispo.train "$@"
