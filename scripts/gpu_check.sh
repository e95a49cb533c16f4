#!/usr/bin/env bash
# First run on a GPU machine: installs the `gpu` extra into its own venv, then runs, within a time
# limit (default 10 minutes in all), the quick preset on GPUs with both weight channels, the
# trainer/engine log-prob agreement check after a sync through each channel, and a short generation
# throughput figure. Prints one summary line per check; the logs go to the output folder.
#
# Usage: bash scripts/gpu_check.sh [options]
#   --venv DIR         venv to install into / run from (default: .venv-gpu)
#   --skip-install     use the venv as it is (it must exist)
#   --checks LIST      comma-separated subset of: quick_object_store, quick_collective,
#                      agreement_object_store, agreement_collective, throughput (default: all)
#   --out DIR          where logs and summary.txt go (default: runs/gpu_check/<UTC time>)
#   --time-limit SEC   wall-clock budget of the checks, install excluded (default: 600)
#   -h, --help         this text
# Exit status: 0 every check passed; 1 a check failed or ran out of time; 2 bad arguments;
# 3 no NVIDIA GPU visible (nothing is installed or run then).
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_CHECKS="quick_object_store,quick_collective,agreement_object_store,agreement_collective,throughput"
venv=".venv-gpu"
skip_install=0
checks="$ALL_CHECKS"
out=""
time_limit=600

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die_usage() { echo "gpu_check: $1" >&2; echo "run 'bash scripts/gpu_check.sh --help' for the options" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --venv) [ $# -ge 2 ] && [ -n "$2" ] || die_usage "--venv needs a folder"; venv="$2"; shift 2 ;;
    --skip-install) skip_install=1; shift ;;
    --checks) [ $# -ge 2 ] && [ -n "$2" ] || die_usage "--checks needs a comma-separated list"; checks="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] && [ -n "$2" ] || die_usage "--out needs a folder"; out="$2"; shift 2 ;;
    --time-limit)
      [ $# -ge 2 ] || die_usage "--time-limit needs a number of seconds"
      [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 60 ] || die_usage "--time-limit must be whole seconds >= 60, got '$2'"
      time_limit="$2"; shift 2 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
IFS=',' read -r -a selected <<< "$checks"
for c in "${selected[@]}"; do
  case ",$ALL_CHECKS," in *",$c,"*) ;; *) die_usage "unknown check '$c' (known: $ALL_CHECKS)" ;; esac
done

# --- a GPU, or a clear refusal ------------------------------------------------------------------
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
if [ "${gpus:-0}" -lt 1 ]; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi missing or lists none): nothing to check on this machine." >&2
  echo "gpu_check: on CPU use 'bash scripts/test.sh'; this script is for a machine with one or more NVIDIA GPUs." >&2
  exit 3
fi
# One GPU: trainer and engine share it (fractions), so the channel uses gloo (NCCL refuses two ranks
# on one device). Two or more: one whole GPU each, the channel uses NCCL.
if [ "$gpus" -ge 2 ]; then share=1; else share=0.5; fi
out="${out:-runs/gpu_check/$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
echo "gpu_check: $gpus GPU(s) ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)); GPUs per worker: $share; logs in $out"

# --- install ------------------------------------------------------------------------------------
if [ "$skip_install" = 0 ]; then
  t0=$SECONDS
  if ! CISPO_VENV="$venv" bash scripts/setup.sh gpu >"$out/install.log" 2>&1; then
    echo "CHECK install: FAIL ($((SECONDS - t0)) s) see $out/install.log"; exit 1
  fi
  echo "CHECK install: PASS ($((SECONDS - t0)) s) $venv"
fi
py="$venv/bin/python"
[ -x "$py" ] || { echo "gpu_check: $py not found (drop --skip-install to install)" >&2; exit 2; }

# --- checks -------------------------------------------------------------------------------------
deadline=$((SECONDS + time_limit))
failed=0
summary=()
run_check() {  # name, command...: runs within what is left of the budget, prints one line
  local name="$1"; shift
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 20 ]; then
    summary+=("CHECK $name: FAIL (not run: time limit of ${time_limit} s reached)"); failed=1; return
  fi
  local t0=$SECONDS rc
  timeout "$left" "$@" >"$out/$name.log" 2>&1; rc=$?
  local figure
  figure=$(grep -h '^{"check"' "$out/$name.log" | tail -1)
  if [ "$rc" = 0 ]; then
    summary+=("CHECK $name: PASS ($((SECONDS - t0)) s) ${figure}")
  else
    [ "$rc" = 124 ] && figure="timed out; $figure"
    summary+=("CHECK $name: FAIL ($((SECONDS - t0)) s, exit $rc) ${figure:-see $out/$name.log}"); failed=1
  fi
  echo "${summary[-1]}"
}
for c in "${selected[@]}"; do
  case "$c" in
    quick_object_store) run_check "$c" "$py" scripts/gpu_checks.py quick --gpus "$share" --channel object_store --run-dir "$out/quick_object_store" ;;
    quick_collective) run_check "$c" "$py" scripts/gpu_checks.py quick --gpus "$share" --channel collective --run-dir "$out/quick_collective" ;;
    agreement_object_store) run_check "$c" "$py" scripts/gpu_checks.py agreement --gpus "$share" --channel object_store ;;
    agreement_collective) run_check "$c" "$py" scripts/gpu_checks.py agreement --gpus "$share" --channel collective ;;
    throughput) run_check "$c" "$py" scripts/gpu_checks.py throughput --gpus "$share" ;;
  esac
done
printf '%s\n' "${summary[@]}" > "$out/summary.txt"
echo "gpu_check: $([ $failed = 0 ] && echo 'all checks passed' || echo 'some checks FAILED'); summary in $out/summary.txt"
exit $failed
