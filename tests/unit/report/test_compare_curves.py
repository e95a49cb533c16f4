"""ScaleRL's compute-performance curve and paired comparisons by seed (cispo.report.curvefit /
paired / analysis, through cispo.compare), on synthetic curves with known parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from cispo.cli.compare import CompareConfig, CurveFitConfig, compare, main
from cispo.report.curvefit import CurveFitError, bootstrap_fit, fit_curve, saturating_curve
from cispo.report.paired import first_reaching, mean_over_range, paired_difference

T95_DF4 = 2.7764451051977987  # two-sided 95% Student-t, 4 degrees of freedom (tables: 2.7764)


# --------------------------------------------------------------------------------------------------
# The curve and its fit
# --------------------------------------------------------------------------------------------------


def test_saturating_curve_values_by_hand() -> None:
    # R(0) = R0; R(C_mid) = (R0 + A) / 2; B = 2, C = 3 C_mid: 1 / (1 + (1/3)^2) = 0.9 of the gain.
    values = saturating_curve([0.0, 50.0, 150.0], r0=0.2, a=0.6, b=2.0, c_mid=50.0)
    assert values.tolist() == pytest.approx([0.2, 0.4, 0.2 + 0.4 * 0.9], abs=1e-15)
    # Huge and tiny ratios neither overflow nor produce NaN.
    extreme = saturating_curve([1e-12, 1e12], r0=0.1, a=0.9, b=20.0, c_mid=1.0)
    assert extreme.tolist() == pytest.approx([0.1, 0.9], abs=1e-12)


@pytest.mark.parametrize("fix_r0", [True, False])
@pytest.mark.parametrize(
    "r0,a,b,c_mid",
    [(0.2, 0.6, 1.5, 60.0),     # bends well inside the data
     (0.3, 0.35, 3.0, 10.0),    # small gain, steep
     (0.1, 0.9, 0.5, 500.0),    # C_mid past the data: a long valley in (A, B, C_mid)
     (0.25, 0.7, 4.0, 150.0)],  # late, sharp bend
)
def test_fit_recovers_known_parameters(fix_r0: bool, r0: float, a: float, b: float, c_mid: float) -> None:
    c = np.arange(0.0, 201.0, 10.0)
    fit = fit_curve(c, saturating_curve(c, r0, a, b, c_mid), CurveFitConfig(fix_r0=fix_r0))
    assert (fit.r0, fit.a, fit.b, fit.c_mid) == pytest.approx((r0, a, b, c_mid), rel=1e-5)
    assert fit.rmse < 1e-7 and fit.n_points == c.size and fit.max_c == 200.0
    assert fit.r0_fitted is (not fix_r0)
    assert fit.bent is (c_mid <= 200.0) and fit.at_search_edge == ()


def test_fit_without_a_start_point_fits_r0() -> None:
    c = np.arange(20.0, 401.0, 20.0)
    fit = fit_curve(c, saturating_curve(c, 0.15, 0.55, 1.2, 90.0))
    assert fit.r0_fitted and (fit.r0, fit.a, fit.b, fit.c_mid) == pytest.approx((0.15, 0.55, 1.2, 90.0), rel=1e-5)


def test_fit_bounds_and_errors() -> None:
    c = np.arange(0.0, 101.0, 10.0)
    # A would be 1.3 without the bound (a pass rate is <= 1): clipped and flagged.
    fit = fit_curve(c, saturating_curve(c, 0.2, 1.3, 1.0, 400.0))
    assert fit.a == 1.0 and "a" in fit.at_search_edge and fit.rmse > 1e-4
    with pytest.raises(CurveFitError, match="3 distinct compute values > 0; the fit needs >= 4"):
        fit_curve([0, 4, 8, 12], [0.2, 0.3, 0.35, 0.37])
    with pytest.raises(CurveFitError, match="compute must be >= 0"):
        fit_curve([-1, 4, 8, 12, 16], [0.2, 0.3, 0.35, 0.37, 0.38])
    with pytest.raises(CurveFitError, match="no point with compute > 0"):
        fit_curve([0, 0], [0.2, 0.3])
    # fit_from_fraction drops the early points (not C = 0): 4 points left of 10 > 0, still a fit.
    fit = fit_curve(c, saturating_curve(c, 0.2, 0.6, 1.5, 30.0), CurveFitConfig(fit_from_fraction=0.65))
    assert fit.n_points == 1 + 4 and fit.a == pytest.approx(0.6, rel=1e-5)


def test_bootstrap_over_seeds_covers_the_truth() -> None:
    rng = np.random.default_rng(1)
    c = np.arange(0.0, 301.0, 20.0)
    truth = dict(r0=0.2, a=0.6, b=1.5, c_mid=80.0)
    runs = [(c, saturating_curve(c, **truth) + rng.normal(0.0, 0.02, c.size)) for _ in range(5)]
    boot = bootstrap_fit(runs, CurveFitConfig(), resamples=150, confidence=0.95, rng=np.random.default_rng(0))
    assert boot is not None and boot.failed == 0 and boot.resamples == 150
    for name, value in truth.items():
        low, high = boot.ci[name]
        assert low <= value <= high, (name, boot.ci[name])
    assert boot.ci["a"][1] - boot.ci["a"][0] < 0.1
    # The same generator seed gives the same interval; one run gives none.
    again = bootstrap_fit(runs, CurveFitConfig(), resamples=150, confidence=0.95, rng=np.random.default_rng(0))
    assert again == boot
    assert bootstrap_fit(runs[:1], CurveFitConfig(), resamples=10, confidence=0.95, rng=rng) is None


# --------------------------------------------------------------------------------------------------
# Paired differences
# --------------------------------------------------------------------------------------------------


def test_mean_over_range_and_first_reaching_by_hand() -> None:
    x = np.array([0.0, 2.0, 4.0, 8.0])
    y = np.array([0.0, 0.4, 0.4, 0.8])
    # Trapezoids: [0,2] 0.4, [2,4] 0.8, [4,8] 2.4 -> 3.6 / 8.
    assert mean_over_range(x, y, 0.0, 8.0) == pytest.approx(0.45)
    # [1, 6]: y(1) = 0.2, y(6) = 0.6: [1,2] 0.3, [2,4] 0.8, [4,6] 1.0 -> 2.1 / 5.
    assert mean_over_range(x, y, 1.0, 6.0) == pytest.approx(0.42)
    assert first_reaching(x, y, 0.4, 1e-12) == 2.0 and first_reaching(x, y, 0.9, 1e-12) is None
    with pytest.raises(ValueError, match="empty range"):
        mean_over_range(x, y, 3.0, 3.0)


def test_paired_difference_intervals_and_verdicts() -> None:
    a = {"0": 0.50, "1": 0.55, "2": 0.61, "3": 0.48, "4": 0.52, "5": 0.9}
    b = {"0": 0.40, "1": 0.42, "2": 0.50, "3": 0.41, "4": 0.47}  # seed 5 only in a: not a pair
    res = paired_difference("final", "cispo", "dapo", a, b, resamples=4000, confidence=0.95,
                            rng=np.random.default_rng(0))
    diffs = [0.10, 0.13, 0.11, 0.07, 0.05]
    assert res.seeds == ("0", "1", "2", "3", "4") and res.differences == pytest.approx(diffs)
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    assert res.mean == pytest.approx(0.092)
    assert res.t_ci == pytest.approx((mean - T95_DF4 * sd / math.sqrt(5), mean + T95_DF4 * sd / math.sqrt(5)))
    low, high = res.bootstrap_ci
    assert min(diffs) <= low < mean < high <= max(diffs)
    assert res.verdict() == "excludes 0: cispo > dapo"
    flipped = paired_difference("final", "dapo", "cispo", b, a, resamples=100, confidence=0.95,
                                rng=np.random.default_rng(0))
    assert flipped.verdict() == "excludes 0: dapo < cispo"
    mixed = paired_difference("auc", "x", "y", {"0": 0.1, "1": 0.3, "2": 0.2}, {"0": 0.2, "1": 0.1, "2": 0.25},
                              resamples=500, confidence=0.95, rng=np.random.default_rng(0))
    assert mixed.verdict() == "includes 0: no difference shown"
    missing = paired_difference("asymptote", "x", "y", {"0": 0.5, "1": None}, {"0": 0.4, "1": 0.3},
                                resamples=10, confidence=0.95, rng=np.random.default_rng(0))
    assert missing.n == 1 and missing.left_out == 1 and missing.bootstrap_ci is None
    assert missing.verdict() == "no interval (fewer than 2 pairs)"


# --------------------------------------------------------------------------------------------------
# End to end through cispo.compare: 2 algorithms x 5 seeds with known curves
# --------------------------------------------------------------------------------------------------

KEY = "eval/heldout/avg@4"
EVAL_STEPS = list(range(0, 101, 10))
TRUE = {"cispo": dict(r0=0.2, a=0.7, b=1.5, c_mid=30.0), "dapo": dict(r0=0.2, a=0.5, b=1.5, c_mid=30.0)}
SEED_OFFSET = [0.0, 0.02, -0.02, 0.01, -0.01]  # shared by both algorithms of a seed: cancels in pairs
TOKENS_PER_STEP = {"cispo": 500.0, "dapo": 400.0}
SECONDS_PER_STEP = 3.0


def _write_run(folder: Path, alg: str, seed: int) -> None:
    (folder / ".hydra").mkdir(parents=True)
    config = {"algorithm": {"name": alg}, "seed": seed, "trainer": {"eps_high": 4.0 if alg == "cispo" else 0.28}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with open(folder / "metrics.jsonl", "w") as f:
        for step in range(0, 101):
            record: dict = {"step": step}
            if step:
                record.update({"time/step": SECONDS_PER_STEP, "rollout/tokens": TOKENS_PER_STEP[alg],
                               "reward/mean": 0.3})
            if step in EVAL_STEPS:
                value = float(saturating_curve([step], **TRUE[alg])[0])
                record[KEY] = value + (SEED_OFFSET[seed] if step else 0.0)
            f.write(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    index = 0
    for alg in ("cispo", "dapo"):
        for seed in range(5):
            _write_run(root / f"{index}_{alg}_s{seed}", alg, seed)
            index += 1
    return root


def _curve(alg: str, seed: int) -> np.ndarray:
    values = saturating_curve(EVAL_STEPS, **TRUE[alg])
    values[1:] += SEED_OFFSET[seed]
    return values


def test_compare_fits_and_pairs_known_curves(sweep: Path, tmp_path: Path) -> None:
    cfg = CompareConfig(bootstrap_resamples=100)
    summary = compare([sweep], tmp_path, target_accuracy=0.45, cfg=cfg)
    groups = summary["curves"][KEY]["groups"]
    assert summary["curves"][KEY]["axis"] == "step"
    for alg, truth in TRUE.items():
        fit = groups[alg]["fit"]
        # The seed offsets average to 0, so the pooled fit is the true curve.
        assert (fit["r0"], fit["a"], fit["b"], fit["c_mid"]) == pytest.approx(tuple(truth.values()), rel=1e-4)
        low, high = groups[alg]["ci"]["a"]
        assert low <= truth["a"] <= high and high - low < 0.05
        # Each run alone: its offset lifts every point after the (fixed) start, so its A orders as the offsets.
        by_offset = sorted(groups[alg]["runs"], key=lambda run: SEED_OFFSET[run["seed"]])
        assert [r["fit"]["a"] for r in by_offset] == sorted(r["fit"]["a"] for r in by_offset)
    rows = {r["metric"]: r for r in summary["paired"][KEY]}
    assert {r["first"] for r in rows.values()} == {"cispo"} and {r["second"] for r in rows.values()} == {"dapo"}
    # The offsets cancel in each pair: every difference equals the difference of the true curves.
    gap = _curve("cispo", 0) - _curve("dapo", 0)
    assert rows["final"]["differences"] == pytest.approx([gap[-1]] * 5)
    # AUC over 0..100 with 10 equal intervals, closed-form trapezoid: (sum - (first + last) / 2) / 10.
    auc_gap = (gap.sum() - (gap[0] + gap[-1]) / 2) / 10
    assert rows["auc"]["mean"] == pytest.approx(auc_gap) and rows["auc"]["n"] == 5
    assert rows["auc"]["bootstrap_ci"] == pytest.approx([auc_gap, auc_gap])
    assert rows["asymptote"]["mean"] == pytest.approx(0.2, abs=1e-3)
    for metric in ("auc", "final", "asymptote"):
        assert rows[metric]["verdict"] == "excludes 0: cispo > dapo", metric
    # Target 0.45: dapo ends at 0.2 + 0.3 / (1 + (30/100)^1.5) = 0.4577, so its seeds 2 (-0.02) and
    # 4 (-0.01) never reach it: 3 pairs, 2 left out.
    to_target = rows["compute_to_target"]
    assert to_target["n"] == 3 and to_target["left_out"] == 2
    for seed in range(5):
        a = first_reaching(np.array(EVAL_STEPS, float), _curve("cispo", seed), 0.45, 1e-12)
        b = first_reaching(np.array(EVAL_STEPS, float), _curve("dapo", seed), 0.45, 1e-12)
        if a is not None and b is not None:
            assert str(seed) in to_target["seeds"]
            assert to_target["differences"][to_target["seeds"].index(str(seed))] == a - b
    assert to_target["mean"] < 0 and "lower is faster" in to_target["note"]
    report = (tmp_path / "report.md").read_text()
    assert f"## Compute-performance curve `{KEY}` vs step" in report
    assert f"## Paired comparisons by seed `{KEY}`" in report
    assert "| cispo - dapo | auc (mean over the common step range) | 5 |" in report
    png = (tmp_path / "fit_eval_heldout_avg_at_4_vs_step.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert json.loads((tmp_path / "summary.json").read_text())["curves"][KEY]["groups"]["dapo"]["fit"]["a"] == \
        pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("axis,scale", [("tokens", TOKENS_PER_STEP), ("time", {"cispo": 3.0, "dapo": 3.0})])
def test_other_compute_axes_rescale_c_mid(sweep: Path, tmp_path: Path, axis: str, scale: dict) -> None:
    cfg = CompareConfig(curve=CurveFitConfig(axis=axis), bootstrap_resamples=20)
    summary = compare([sweep], tmp_path, plots=False, cfg=cfg)
    for alg, truth in TRUE.items():
        fit = summary["curves"][KEY]["groups"][alg]["fit"]
        # C is proportional to the step: A and B unchanged, C_mid scaled by compute per step.
        assert fit["c_mid"] == pytest.approx(truth["c_mid"] * scale[alg], rel=1e-4)
        assert (fit["a"], fit["b"]) == pytest.approx((truth["a"], truth["b"]), rel=1e-4)
    auc = next(r for r in summary["paired"][KEY] if r["metric"] == "auc")
    assert f"common {axis} range" in auc["note"]


def test_cli_curve_options_and_group_by_two_keys(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert main([str(sweep), "--out", str(out), "--no-plots", "--curve-x", "tokens", "--bootstrap", "50",
                 "--group-by", "algorithm.name,trainer.eps_high", "--baseline", "dapo / 0.28"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["groups"]) == ["cispo / 4.0", "dapo / 0.28"]
    assert summary["curves"][KEY]["axis"] == "tokens"
    assert {(r["first"], r["second"]) for r in summary["paired"][KEY]} == {("cispo / 4.0", "dapo / 0.28")}
    assert main([str(sweep), "--out", str(out), "--no-plots", "--baseline", "grpo"]) == 2
    with pytest.raises(SystemExit):
        main([str(sweep), "--curve-x", "flops"])


def test_too_few_eval_points_say_why_not_fitted(tmp_path: Path) -> None:
    # The first CPU study's shape: evals at steps 0, 4, 8 only: 2 compute values > 0.
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("algorithm: {name: cispo}\nseed: 0\n")
    lines = [{"step": s, KEY: v} for s, v in ((0, 0.23), (4, 0.32), (8, 0.35))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = compare([run], tmp_path / "out", plots=False)
    entry = summary["curves"][KEY]["groups"]["cispo"]
    assert entry["fit"] is None and "2 distinct compute values > 0" in entry["reason"]
    assert entry["ci"] is None
    assert "no fit: 2 distinct compute values > 0" in (tmp_path / "out" / "report.md").read_text()
