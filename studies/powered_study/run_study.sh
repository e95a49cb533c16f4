#!/usr/bin/env bash
# The powered CPU study (docs/powered_study.md), stage by stage:
#   bash studies/powered_study/run_study.sh [all|pilot|main|caps|async|archive|report]
# pilot: 4 runs, not part of the analysis (step time, curve bend, seed spread: docs/powered_study.md's rule);
# main: CISPO vs DAPO vs GRPO x 5 seeds; caps: CISPO caps 4/8 and DAPO clips 0.2/0.4 x 5 seeds;
# async: the main comparison with asynchronous rollout, up to 4 versions stale;
# archive: each run's config and gzipped metrics into runs/ here (what the reports are computed from);
# report: every comparison (cispo.compare) into this folder, from multirun/ or, with
# RUNS=studies/powered_study/runs, from the archived runs (no training needed).
# 1-1.5 min per run, ~64 minutes for all 54 runs on 2 CPU cores (docs/powered_study.md has the measured times).
# Runs resume: a sweep started again continues each run from its latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=studies/powered_study
RUNS=${RUNS:-multirun}
SWEEPS="powered_study_pilot powered_study powered_study_cispo_caps powered_study_dapo_clips powered_study_async"
stage=${1:-all}

pilot() {
    "$PY" -m cispo.train -m experiment=powered_study algorithm=cispo,dapo seed=100,101 \
        hydra.sweep.dir=multirun/powered_study_pilot
}
main_sweep() { "$PY" -m cispo.train -m experiment=powered_study; }
async_sweep() { "$PY" -m cispo.train -m experiment=powered_study_async; }
caps() {
    "$PY" -m cispo.train -m experiment=powered_study_cispo_caps
    "$PY" -m cispo.train -m experiment=powered_study_dapo_clips
}
archive() {
    for sweep in $SWEEPS; do
        for run in multirun/"$sweep"/*/; do
            [ -f "$run/metrics.jsonl" ] || continue
            dest="$OUT/runs/$sweep/$(basename "$run")"
            mkdir -p "$dest"
            cp "$run/.hydra/config.yaml" "$dest/config.yaml"
            gzip -9 -n -c "$run/metrics.jsonl" > "$dest/metrics.jsonl.gz"
        done
    done
}
report() {
    if [ -d "$RUNS/powered_study_pilot" ]; then
        "$PY" -m cispo.compare "$RUNS/powered_study_pilot" --out "$OUT/pilot"
        "$PY" -m cispo.report.power "$OUT/pilot/summary.json" --stat auc --evals-per-run 11 \
            --problems 256 --k 4 --plan-problems 128,256,512 --out "$OUT/pilot/power.md"
    fi
    "$PY" -m cispo.compare "$RUNS/powered_study" --out "$OUT/main"
    "$PY" -m cispo.report.power "$OUT/main/summary.json" --stat auc --evals-per-run 11 \
        --problems 256 --k 4 --plan-problems 128,256,512 --out "$OUT/main/power.md"
    "$PY" -m cispo.compare "$RUNS/powered_study" --curve-x tokens --no-plots --out "$OUT/main_tokens"
    "$PY" -m cispo.compare "$RUNS"/powered_study/*_cispo_s* "$RUNS/powered_study_cispo_caps" \
        --group-by algorithm.name,trainer.eps_high --baseline "cispo / 4.0" --out "$OUT/cispo_caps"
    "$PY" -m cispo.compare "$RUNS"/powered_study/*_dapo_s* "$RUNS/powered_study_dapo_clips" \
        --group-by algorithm.name,trainer.eps_high --baseline "dapo / 0.28" --out "$OUT/dapo_clips"
    if [ -d "$RUNS/powered_study_async" ]; then
        "$PY" -m cispo.compare "$RUNS/powered_study_async" --out "$OUT/async"
        for alg in cispo dapo grpo; do  # the cost of staleness, per algorithm, paired by seed
            "$PY" -m cispo.compare "$RUNS"/powered_study/*_${alg}_s* "$RUNS"/powered_study_async/*_${alg}_s* \
                --group-by algorithm.name,rollout.mode --no-plots --out "$OUT/async_vs_sync/$alg"
        done
    fi
}

case "$stage" in
    all) pilot; main_sweep; caps; async_sweep; archive; report ;;
    pilot) pilot ;;
    main) main_sweep ;;
    caps) caps ;;
    async) async_sweep ;;
    archive) archive ;;
    report) report ;;
    *) echo "usage: $0 [all|pilot|main|caps|async|archive|report]" >&2; exit 2 ;;
esac
