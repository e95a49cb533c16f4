#!/usr/bin/env bash
# TRL for the comparison benchmark only (benchmarks/bench_step_vs_trl.py): it is NOT a dependency of
# cispo. .venv-trl sees the project's .venv (same torch, transformers, datasets: the same model code on
# both sides) and adds only TRL and what it needs on top. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
TRL_VERSION=${TRL_VERSION:-1.16.0}  # override where only another version is reachable (e.g. an offline mirror)
if [ -x .venv-trl/bin/python ] && .venv-trl/bin/python -c "import trl, sys; sys.exit(trl.__version__ != '$TRL_VERSION')" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -m venv --without-pip .venv-trl 2>/dev/null || python3.11 -m venv .venv-trl
site_base=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
site_trl=$(.venv-trl/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$site_base" > "$site_trl/cispo_base_venv.pth"
# pip from the base venv installs into .venv-trl (--prefix) and resolves against both.
.venv-trl/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m pip install -q --prefix .venv-trl pip
.venv-trl/bin/python -m pip install -q "trl==$TRL_VERSION"
.venv-trl/bin/python -c "import trl; print('trl', trl.__version__)"
