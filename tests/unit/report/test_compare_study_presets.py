"""The powered study's sweep presets (configs/experiment/powered_study*.yaml) compose, validate and
hold the design that docs/powered_study.md pre-registers. Hydra composition only: no run."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from cispo.config import load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
README = Path(__file__).resolve().parents[3] / "docs" / "powered_study.md"
SEEDS = [0, 1, 2, 3, 4]
# preset -> (sweep dir, the arms it runs as (algorithm, eps_high) in sweep order)
PRESETS = {
    "powered_study": ("multirun/powered_study", [("cispo", 4.0), ("dapo", 0.28), ("grpo", 0.2)]),
    "powered_study_cispo_caps": ("multirun/powered_study_cispo_caps", [("cispo", 3.0), ("cispo", 7.0)]),
    "powered_study_dapo_clips": ("multirun/powered_study_dapo_clips", [("dapo", 0.2), ("dapo", 0.4)]),
    "powered_study_async": ("multirun/powered_study_async", [("cispo", 4.0), ("dapo", 0.28), ("grpo", 0.2)]),
}


def _compose(overrides: list[str], hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


def _jobs(preset: str) -> tuple[str, list[list[str]]]:
    """The sweep dir and each job's overrides, as `python -m cispo.train -m experiment=<preset>` expands them."""
    cfg = _compose([f"experiment={preset}"], hydra=True)
    params = [f"{k}={v}" for k, v in OmegaConf.to_container(cfg.hydra.sweeper.params).items()]
    parsed = OverridesParser.create().parse_overrides(params)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return str(cfg.hydra.sweep.dir), batch


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sweep_expands_to_its_arms_and_every_job_validates(preset: str) -> None:
    sweep_dir, jobs = _jobs(preset)
    expected_dir, arms = PRESETS[preset]
    assert sweep_dir == expected_dir
    assert len(jobs) == len(arms) * len(SEEDS)
    seen = set()
    for overrides in jobs:
        raw = OmegaConf.to_container(_compose([f"experiment={preset}", *overrides, "run_dir=runs/x"]), resolve=True)
        raw.pop("hydra", None)
        cfg = load_config(raw)
        seen.add((cfg.algorithm.name, cfg.trainer.eps_high, cfg.seed))
        # The pre-registered design, whatever the schema defaults become.
        assert cfg.model.path == "tiny" and cfg.model.warmstart.steps == 1000
        assert (cfg.total_steps, cfg.prompts_per_step, cfg.group_size) == (100, 16, 8)
        updates = cfg.trainer.ppo_epochs * cfg.batch_size // cfg.trainer.mini_batch_size
        assert updates == 16  # M1's Fig. 2 regime: 16 optimizer steps per rollout batch
        assert cfg.trainer.lr == 2e-4 and cfg.trainer.lr_schedule == "constant"
        assert (cfg.eval.every, cfg.eval.k, cfg.eval.temperature) == (10, 4, 1.0) and cfg.eval.at_start
        task = cfg.data.train[0].arithmetic
        assert (task.num_heldout, task.num_operands, task.max_digits) == (256, 3, 1)
        assert cfg.rollout.sampling.max_tokens == cfg.eval.max_tokens == 16
    assert seen == {(alg, eps, seed) for alg, eps in arms for seed in SEEDS}


def test_readme_states_the_presets_design() -> None:
    text = README.read_text()
    for needle in ("experiment=powered_study", "powered_study_cispo_caps", "powered_study_dapo_clips",
                   "16 optimizer steps per rollout batch", "256 held-out problems", "100 steps",
                   "Pre-registered"):
        assert needle in text, needle


def test_command_line_overrides_replace_the_presets_sweep_values() -> None:
    """The pilot (README, stage 0): `experiment=powered_study algorithm=cispo,dapo seed=100,101` runs 4 jobs."""
    cfg = _compose(["experiment=powered_study"], hydra=True)
    params = [f"{k}={v}" for k, v in OmegaConf.to_container(cfg.hydra.sweeper.params).items()]
    # As BasicSweeper.sweep does: the preset's params first, then the command line's; a later key wins.
    parsed = OverridesParser.create().parse_overrides([*params, "algorithm=cispo,dapo", "seed=100,101"])
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    assert sorted(map(tuple, batch)) == sorted(
        (f"algorithm={a}", f"seed={s}") for a in ("cispo", "dapo") for s in (100, 101))
