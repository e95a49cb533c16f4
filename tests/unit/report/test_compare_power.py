"""The power calculation (cispo.report.power) against published tables and hand computation."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from cispo.report.power import (
    chi2_quantile,
    detectable_paired,
    detectable_two_sample,
    main,
    normal_quantile,
    sd_upper_bound,
    seed_spread,
    seeds_paired,
    seeds_two_sample,
    t_quantile,
)

REPO = Path(__file__).resolve().parents[3]
CPU_STUDY = REPO / "studies" / "cpu_study" / "summary.json"


def test_quantiles_match_tables() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.8) == pytest.approx(0.841621, abs=1e-6)
    assert t_quantile(0.8, 9) == pytest.approx(0.8834, abs=1e-4) and t_quantile(0.2, 9) == pytest.approx(-0.8834, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4) and t_quantile(0.5, 3) == 0.0
    # Chi-square table values; Wilson-Hilferty is within ~1% at these df.
    for p, df, table in ((0.2, 6, 3.0701), (0.05, 10, 3.9403), (0.95, 4, 9.4877)):
        assert chi2_quantile(p, df) == pytest.approx(table, rel=0.01), (p, df)
    # The 80% upper bound of an sd from df = 6: sd * sqrt(6 / chi2_0.2(6)) ~ 1.40 sd.
    assert sd_upper_bound(1.0, 6) == pytest.approx(math.sqrt(6 / 3.0701), rel=0.005)


def test_sample_sizes_match_published_tables() -> None:
    # Cohen (1988), Table 2.4.1, two-sided alpha 0.05, power 0.8: d = 0.2 -> 393 (exact noncentral t:
    # 394), d = 0.5 -> 64, d = 0.8 -> 26 per group.
    assert seeds_two_sample(1.0, 0.5) == 64 and seeds_two_sample(1.0, 0.8) == 26
    assert seeds_two_sample(1.0, 0.2) in (393, 394)
    # Paired t (G*Power, dz = delta / sd of the differences): dz 0.5 -> 34, dz 1.0 -> 10, dz 0.3 -> 90.
    assert seeds_paired(1.0, 0.5) == 34 and seeds_paired(1.0, 1.0) == 10 and seeds_paired(1.0, 0.3) == 90
    # Only the ratio matters; the detectable difference at the chosen n is <= delta, at n - 1 above it.
    assert seeds_two_sample(0.05, 0.025) == 64
    n = seeds_two_sample(0.0532, 0.05)
    assert detectable_two_sample(0.0532, n) <= 0.05 < detectable_two_sample(0.0532, n - 1)
    m = seeds_paired(0.0849, 0.05)
    assert detectable_paired(0.0849, m) <= 0.05 < detectable_paired(0.0849, m - 1)


def test_seed_spread_by_hand() -> None:
    summary = {
        "groups": {"a": {"seeds": [0, 1, 2]}, "b": {"seeds": [0, 1, 2]}},
        "accuracy": {"eval/x/avg@4": {"a": {"final": {"values": [0.3, 0.4, 0.5]}},
                                      "b": {"final": {"values": [0.2, 0.2, 0.5]}}}},
    }
    spread = seed_spread(summary)
    # a: sd 0.1; b: mean 0.3, squares 0.01 + 0.01 + 0.04 = 0.06 / 2 -> sd sqrt(0.03); pooled sqrt((0.02 + 0.06) / 4).
    assert spread.sd["a"] == pytest.approx(0.1) and spread.sd["b"] == pytest.approx(math.sqrt(0.03))
    assert spread.pooled_sd == pytest.approx(math.sqrt(0.02)) and spread.pooled_df == 4
    # Differences a - b by seed: 0.1, 0.2, 0.0 -> sd 0.1.
    assert spread.paired_sd == {"a - b": pytest.approx(0.1)} and spread.pooled_paired_df == 2
    assert spread.mean_accuracy == pytest.approx(2.1 / 6)
    with pytest.raises(ValueError, match="not in the summary"):
        seed_spread(summary, "eval/y/avg@4")
    with pytest.raises(ValueError, match="no eval accuracy"):
        seed_spread({"accuracy": {}})


def test_cli_on_the_first_cpu_study(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    summary = json.loads(CPU_STUDY.read_text())
    finals = {g: e["final"]["values"] for g, e in summary["accuracy"]["eval/heldout/avg@4"].items()}
    pooled = math.sqrt(sum(statistics.variance(v) for v in finals.values()) / 3)  # 3 groups x 3 seeds
    assert main([str(CPU_STUDY), "--problems", "64", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert f"pooled sd over seeds: **{pooled:.4f}** (df 6" in out
    noise = math.sqrt(0.3268 * (1 - 0.3268) / 256)  # p (1 - p) / (k N) at the study's mean accuracy
    assert f"sd <= {noise:.4f}" in out
    assert out.count("\n| 512 |") == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"accuracy": {}}))
    assert main([str(bad), "--problems", "64", "--k", "4"]) == 2


def test_auc_spread_from_a_fresh_compare_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cispo.compare keeps each run's AUC (mean over its steps); the power tool reads it with --stat auc."""
    from cispo.cli.compare import compare

    curves = {("a", 0): [0.2, 0.4, 0.4], ("a", 1): [0.2, 0.3, 0.5], ("b", 0): [0.2, 0.2, 0.3], ("b", 1): [0.2, 0.4, 0.4]}
    for (alg, seed), values in curves.items():
        run = tmp_path / "runs" / f"{alg}{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"algorithm: {{name: {alg}}}\nseed: {seed}\n")
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"step": 5 * i, "eval/t/avg@4": v}) + "\n" for i, v in enumerate(values)))
    summary = compare([tmp_path / "runs"], tmp_path / "out", plots=False)
    # Trapezoid over steps 0, 5, 10 / 10: (y0 + 2 y1 + y2) / 4.
    by_hand = {k: (v[0] + 2 * v[1] + v[2]) / 4 for k, v in curves.items()}
    assert summary["accuracy"]["eval/t/avg@4"]["a"]["auc"]["values"] == pytest.approx([by_hand[("a", 0)], by_hand[("a", 1)]])
    spread = seed_spread(summary, stat="auc")
    assert spread.sd["b"] == pytest.approx(statistics.stdev([by_hand[("b", 0)], by_hand[("b", 1)]]))
    assert main([str(tmp_path / "out" / "summary.json"), "--problems", "32", "--k", "4", "--stat", "auc",
                 "--evals-per-run", "3"]) == 0
    out = capsys.readouterr().out
    assert "auc of each run" in out and "averaged over 3 evals" in out
