"""cispo.compare on synthetic run folders (3 algorithms x 2 seeds) with hand-computed expectations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cispo.cli.compare import CompareError, compare, discover_runs, main, mean_ci, seed_curve, t_critical

REPO = Path(__file__).resolve().parents[3]
STEPS = range(1, 11)
EVAL_STEPS = (2, 4, 6, 8, 10)
ACC_KEY = "eval/arith/avg@4"
# Two-sided 95% Student-t critical value for 1 degree of freedom (tables: 12.7062047...).
T95_DF1 = 12.706204736174698

# Eval accuracy per (algorithm, seed) at EVAL_STEPS.
ACCURACY = {
    ("cispo", 0): [0.16, 0.32, 0.48, 0.64, 0.80],
    ("cispo", 1): [0.18, 0.34, 0.50, 0.66, 0.82],
    ("dapo", 0): [0.08, 0.16, 0.24, 0.32, 0.40],
    ("dapo", 1): [0.10, 0.18, 0.26, 0.34, 0.30],  # drops at the end: final != best
    ("grpo", 0): [0.04, 0.08, 0.12, 0.16, 0.20],
    ("grpo", 1): [0.06, 0.10, 0.14, 0.18, 0.22],
}
STEP_SECONDS = {("cispo", 0): 2.0, ("cispo", 1): 2.2, ("dapo", 0): 3.0, ("dapo", 1): 3.0,
                ("grpo", 0): 1.0, ("grpo", 1): 1.5}
EPS_HIGH = {"cispo": 5.0, "dapo": 0.28, "grpo": 0.2}


def _records(alg: str, seed: int) -> list[dict]:
    records, elapsed = [], 0.0
    for step in STEPS:
        seconds = STEP_SECONDS[(alg, seed)]
        elapsed += seconds
        record = {
            "step": step,
            "reward/mean": 0.1 * step + 0.01 * seed,
            "actor/entropy": 1.0 / step,
            "actor/is_clip_frac_high": 0.01 * seed,
            "actor/is_clip_frac_low": 0.0,
            "time/step": seconds,
            "time/generate": seconds * 0.25,
            "time/update": seconds * 0.75,
            "dyn/rounds": 1 + step % 2,
        }
        if alg != "grpo":  # grpo's runs never logged it: plotted for the others, with a warning
            record["actor/dropped_token_frac"] = 0.0 if alg == "cispo" else 0.05
        if alg == "cispo":  # the others' wall-clock comes from the running sum of time/step
            record["time/total_elapsed"] = elapsed + 100.0
        if step in EVAL_STEPS:
            record[ACC_KEY] = ACCURACY[(alg, seed)][EVAL_STEPS.index(step)]
        records.append(record)
    return records


def _config(alg: str, seed: int) -> dict:
    lr = 2e-6 if (alg, seed) == ("grpo", 1) else 1e-6
    return {"algorithm": {"name": alg, "eps_high": EPS_HIGH[alg], "eps_low": 0.2},
            "seed": seed, "trainer": {"lr": lr, "mini_batches": 4}}


def _make_run(folder: Path, alg: str, seed: int, hydra: bool) -> Path:
    config_path = folder / ".hydra" / "config.yaml" if hydra else folder / "config.yaml"
    config_path.parent.mkdir(parents=True)
    config_path.write_text(yaml.safe_dump(_config(alg, seed)))
    with open(folder / "metrics.jsonl", "w") as f:
        for record in _records(alg, seed):
            f.write(json.dumps(record) + "\n")
    # A checkpoint holds a config.yaml too: it must not be taken for a run.
    ckpt = folder / "checkpoints" / "step_00000010"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(config_path.read_text())
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A Hydra multirun folder (cispo, dapo x 2 seeds) plus two stand-alone grpo run folders."""
    root = tmp_path_factory.mktemp("runs")
    multirun = root / "multirun" / "2026-11-30" / "12-00-00"
    multirun.mkdir(parents=True)
    (multirun / "multirun.yaml").write_text("hydra: {}\n")
    for index, (alg, seed) in enumerate([("cispo", 0), ("cispo", 1), ("dapo", 0), ("dapo", 1)]):
        _make_run(multirun / str(index), alg, seed, hydra=True)
    singles = [_make_run(root / f"grpo_s{seed}", "grpo", seed, hydra=False) for seed in (0, 1)]
    return [root / "multirun", *singles]


@pytest.fixture(scope="module")
def result(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("out")
    summary = compare(runs, out, metric_prefixes=["dyn/"])
    return summary, out


def _ci(values: list[float]) -> float:
    """Half-width of the 95% t-interval for two values, by hand."""
    assert len(values) == 2
    mean = (values[0] + values[1]) / 2
    sd = math.sqrt(((values[0] - mean) ** 2 + (values[1] - mean) ** 2) / 1)
    return T95_DF1 * sd / math.sqrt(2)


def test_final_and_best_accuracy_match_hand_computation(result: tuple[dict, Path]) -> None:
    summary, _ = result
    table = summary["accuracy"][ACC_KEY]
    assert list(table) == ["cispo", "dapo", "grpo"]
    for alg in table:
        finals = [ACCURACY[(alg, s)][-1] for s in (0, 1)]
        bests = [max(ACCURACY[(alg, s)]) for s in (0, 1)]
        assert table[alg]["final"]["mean"] == pytest.approx(sum(finals) / 2, abs=1e-12)
        assert table[alg]["final"]["ci"] == pytest.approx(_ci(finals), rel=1e-9)
        assert table[alg]["best"]["mean"] == pytest.approx(sum(bests) / 2, abs=1e-12)
        assert table[alg]["final"]["n"] == 2
    # dapo by hand: final (0.40 + 0.30) / 2 = 0.35, CI 12.7062 * 0.0707107 / 1.41421 = 0.63531;
    # best (0.40 + 0.34) / 2 = 0.37.
    assert table["dapo"]["final"]["mean"] == pytest.approx(0.35)
    assert table["dapo"]["final"]["ci"] == pytest.approx(0.635310, abs=1e-6)
    assert table["dapo"]["best"]["mean"] == pytest.approx(0.37)


def test_steps_to_target_default_is_the_weakest_algorithms_best(result: tuple[dict, Path]) -> None:
    summary, out = result
    # Weakest: grpo, whose seed-mean curve peaks at step 10 at (0.20 + 0.22) / 2 = 0.21.
    assert summary["targets"][ACC_KEY]["value"] == pytest.approx(0.21, abs=1e-12)
    assert "grpo" in summary["targets"][ACC_KEY]["source"]
    steps = {alg: e["steps_to_target"] for alg, e in summary["accuracy"][ACC_KEY].items()}
    # Seed means: cispo 0.17, 0.33 -> step 4; dapo 0.09, 0.17, 0.25 -> step 6; grpo -> step 10.
    assert {a: s["mean_curve"] for a, s in steps.items()} == {"cispo": 4, "dapo": 6, "grpo": 10}
    assert {a: s["per_seed"] for a, s in steps.items()} == {
        "cispo": [4, 4], "dapo": [6, 6], "grpo": [None, 10]}  # grpo seed 0 peaks at 0.20
    assert {a: s["relative_to_fastest"] for a, s in steps.items()} == {
        "cispo": 1.0, "dapo": 1.5, "grpo": 2.5}
    report = (out / "report.md").read_text()
    assert "| cispo | 0.8100 ± 0.1271 (n=2) | 0.8100 ± 0.1271 (n=2) | 4 | 1.00x | 4, 4 |" in report
    assert "| dapo | 0.3500 ± 0.6353 (n=2) | 0.3700 ± 0.3812 (n=2) | 6 | 1.50x | 6, 6 |" in report
    assert "| grpo | 0.2100 ± 0.1271 (n=2) | 0.2100 ± 0.1271 (n=2) | 10 | 2.50x | not reached, 10 |" in report
    assert "Target accuracy 0.2100" in report


def test_given_target_accuracy(runs: list[Path], tmp_path: Path) -> None:
    summary = compare(runs, tmp_path, target_accuracy=0.5, plots=False)
    steps = {a: e["steps_to_target"] for a, e in summary["accuracy"][ACC_KEY].items()}
    # cispo seed means 0.17, 0.33, 0.49, 0.65 -> step 8; the others never reach 0.5.
    assert {a: s["mean_curve"] for a, s in steps.items()} == {"cispo": 8, "dapo": None, "grpo": None}
    assert steps["cispo"]["per_seed"] == [8, 6]
    assert "| grpo |" in (tmp_path / "report.md").read_text() and "not reached" in (
        tmp_path / "report.md").read_text()


def test_time_reward_phases_and_config_diff(result: tuple[dict, Path]) -> None:
    summary, out = result
    time_table = summary["time_per_step"]
    assert time_table["cispo"]["mean"] == pytest.approx(2.1)
    assert time_table["cispo"]["ci"] == pytest.approx(_ci([2.0, 2.2]))
    assert time_table["dapo"]["ci"] == pytest.approx(0.0, abs=1e-12)
    assert summary["phases"]["grpo"] == pytest.approx({"generate": 1.25 * 0.25, "update": 1.25 * 0.75})
    reward = summary["reward"]["cispo"]
    assert reward["final"]["mean"] == pytest.approx((1.0 + 1.01) / 2)
    assert summary["config_diff"] == {
        "algorithm.eps_high": {"cispo": "5.0", "dapo": "0.28", "grpo": "0.2"},
        "algorithm.name": {"cispo": '"cispo"', "dapo": '"dapo"', "grpo": '"grpo"'},
        "trainer.lr": {"cispo": "1e-06", "dapo": "1e-06", "grpo": "varies: 1e-06 | 2e-06"},
    }
    assert summary["config_within_group"] == {"trainer.lr": {"grpo": ["1e-06", "2e-06"]}}
    # Mechanism: dapo drops 5% of tokens every step, cispo none; grpo never logged it.
    dropped = summary["mechanism"]["actor/dropped_token_frac"]
    assert set(dropped) == {"cispo", "dapo"}
    assert dropped["dapo"]["mean"] == pytest.approx(0.05) and dropped["cispo"]["mean"] == 0.0
    # is_clip_frac_high = 0.01 * seed each step: run means 0.0 and 0.01.
    assert summary["mechanism"]["actor/is_clip_frac_high"]["grpo"]["mean"] == pytest.approx(0.005)
    assert summary["mechanism"]["actor/is_clip_frac_high"]["grpo"]["max_step"] == pytest.approx(0.01)
    assert summary["groups"]["cispo"]["seeds"] == [0, 1]
    report = (out / "report.md").read_text()
    assert "| cispo | 2.1000 ± 1.2706 (n=2) |" in report
    assert "| `algorithm.eps_high` | 5.0 | 0.28 | 0.2 |" in report
    assert json.loads((out / "summary.json").read_text())["targets"] == summary["targets"]


def test_plots_exist_and_missing_keys_are_warned_not_fatal(result: tuple[dict, Path]) -> None:
    summary, out = result
    expected = {
        f"{stem}_vs_{axis}.png"
        for stem in ("reward_mean", "eval_arith_avg_at_4", "actor_entropy", "actor_is_clip_frac_high",
                     "actor_is_clip_frac_low", "actor_dropped_token_frac", "dyn_rounds")
        for axis in ("step", "time")
    } | {"fit_eval_arith_avg_at_4_vs_step.png"}  # the compute-performance fit (default axis: step)
    assert set(summary["plots"]) == expected
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert not list(out.glob("response_length*"))
    warnings = "\n".join(summary["warnings"])
    assert "'response_length/mean' not found in any run: plot skipped" in warnings
    assert "grpo: metric 'actor/dropped_token_frac' not logged" in warnings
    report = (out / "report.md").read_text()
    assert "![eval_arith_avg_at_4_vs_step](eval_arith_avg_at_4_vs_step.png)" in report


def test_seed_curve_aligns_by_step_with_wall_clock(runs: list[Path]) -> None:
    groups = {}
    for run in discover_runs(runs):
        groups.setdefault(run.group, []).append(run)
    assert sorted(groups) == ["cispo", "dapo", "grpo"] and all(len(v) == 2 for v in groups.values())
    cispo = seed_curve(groups["cispo"], ACC_KEY, 0.95)
    assert cispo.steps.tolist() == list(EVAL_STEPS)
    assert cispo.mean[0] == pytest.approx(0.17) and cispo.ci[0] == pytest.approx(_ci([0.16, 0.18]))
    # cispo logs time/total_elapsed (100 + seconds * step): at step 2, seeds at 104.0 and 104.4.
    assert cispo.elapsed[0] == pytest.approx(104.2)
    # dapo: running sum of time/step (3.0 per step): step 4 at 12 s.
    dapo = seed_curve(groups["dapo"], ACC_KEY, 0.95)
    assert dapo.elapsed[1] == pytest.approx(12.0)


def test_t_critical_and_single_seed_estimates() -> None:
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281,
             20: 2.0860, 30: 2.0423}
    for df, value in table.items():
        assert t_critical(df) == pytest.approx(value, abs=1e-4), df
    assert t_critical(1, 0.99) == pytest.approx(63.6567, abs=1e-4)
    assert t_critical(5, 0.99) == pytest.approx(4.0321, abs=1e-4)
    one = mean_ci([0.3])
    assert one.mean == 0.3 and one.ci is None and one.n == 1
    three = mean_ci([1.0, 2.0, 4.0])
    assert three.ci == pytest.approx(4.3027 * float(np.std([1.0, 2.0, 4.0], ddof=1)) / math.sqrt(3), rel=1e-4)
    with pytest.raises(ValueError, match="df"):
        t_critical(0)


def test_single_seed_report_has_no_band(tmp_path: Path) -> None:
    run = _make_run(tmp_path / "only", "cispo", 0, hydra=False)
    summary = compare([run], None, plots=False)
    assert summary["out_dir"] == str(run / "comparison")
    assert summary["accuracy"][ACC_KEY]["cispo"]["final"] == {"mean": 0.8, "ci": None, "n": 1, "values": [0.8]}
    assert "| cispo | 0.8000 (n=1) | 0.8000 (n=1) | 10 | 1.00x | 10 |" in (run / "comparison" / "report.md").read_text()


def test_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no runs found"):
        compare([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(CompareError, match="not a folder"):
        compare([tmp_path / "missing"], tmp_path / "out")

    no_metrics = tmp_path / "no_metrics"
    (no_metrics / ".hydra").mkdir(parents=True)
    (no_metrics / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_config("cispo", 0)))
    with pytest.raises(CompareError, match=f"run folder {no_metrics} has a config but no metrics.jsonl"):
        compare([no_metrics], tmp_path / "out")
    sweep = tmp_path / "sweep"
    _make_run(sweep / "0", "cispo", 0, hydra=True)
    (sweep / "1" / ".hydra").mkdir(parents=True)
    (sweep / "1" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(CompareError, match=f"{sweep / '1'} has a config but no metrics.jsonl"):
        compare([sweep], tmp_path / "out")

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(CompareError, match="has metrics.jsonl but no config"):
        compare([no_config], tmp_path / "out")
    (no_config / "config.yaml").write_text("algorithm: {name: cispo}\n")
    with pytest.raises(CompareError, match=f"{no_config / 'config.yaml'}: missing key 'seed'"):
        compare([no_config], tmp_path / "out")
    (no_config / "config.yaml").write_text("algorithm: {name: cispo}\nseed: 0\n")
    (no_config / "metrics.jsonl").write_text("")
    with pytest.raises(CompareError, match="has no metrics lines"):
        compare([no_config], tmp_path / "out")
    with pytest.raises(CompareError, match="--out is required"):
        compare([no_config, sweep / "0"], None)


def test_archived_runs_give_the_same_summary(runs: list[Path], result: tuple[dict, Path], tmp_path: Path) -> None:
    """A study's runs kept as `config.yaml` + `metrics.jsonl.gz` (studies/powered_study/runs) compare like the originals."""
    import gzip
    import shutil

    from cispo.report.runs import find_config
    from cispo.tracking import MetricsFileError

    archived = []
    for index, run in enumerate(discover_runs(runs)):
        dest = tmp_path / "archive" / f"{index}_{run.group}_s{run.seed}"
        dest.mkdir(parents=True)
        shutil.copy(find_config(run.path), dest / "config.yaml")
        (dest / "metrics.jsonl.gz").write_bytes(gzip.compress((run.path / "metrics.jsonl").read_bytes()))
        archived.append(dest)
    assert len(archived) == 6
    summary, _ = result
    again = compare([tmp_path / "archive"], tmp_path / "out", metric_prefixes=["dyn/"], plots=False)
    assert again["accuracy"] == summary["accuracy"] and again["mechanism"] == summary["mechanism"]

    (archived[0] / "metrics.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(MetricsFileError, match=f"{archived[0] / 'metrics.jsonl.gz'}: not a readable gzip file"):
        compare([tmp_path / "archive"], tmp_path / "out2", plots=False)


def test_cli(runs: list[Path], tmp_path: Path) -> None:
    assert main([*map(str, runs), "--out", str(tmp_path / "cli"), "--target-accuracy", "0.3", "--no-plots"]) == 0
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["targets"][ACC_KEY]["value"] == 0.3
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "cispo.compare", str(tmp_path / "empty")],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 2 and "error: no runs found" in proc.stderr
