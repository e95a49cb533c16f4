"""Every default is declared once (the typed schemas), and the YAML presets say only what they change.

Composes every config group option and every experiment preset with Hydra (no process starts) and
checks: the generated base.yaml and reference table are fresh and faithful; every composition passes
the schema; no preset repeats a value it would get anyway; no value in a YAML file is overridden by
every experiment that uses it (a dead key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cispo.cli import config_reference
from cispo.config import DERIVED_KEYS, load_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
GROUPS = ("model", "algorithm", "data", "rollout", "trainer", "reward", "eval", "logger")
GLOBAL_GROUPS = ("algorithm", "experiment")  # files declared `@package _global_`
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# Overrides a group option needs to form a valid run on its own (its eval sets, a batch its mini-batch fits).
NEEDS = {
    ("data", "math"): ["eval=aime"], ("data", "deepmath"): ["eval=aime"],
    ("data", "gsm8k"): ["eval.sets=[gsm8k]"], ("data", "code"): ["eval.sets=[humaneval]", "reward=code"],
    ("eval", "aime"): ["data=math"], ("model", "local"): ["model.path=/models/any"],
    ("trainer", "gpu"): ["prompts_per_step=128"],
}


def compose_raw(overrides: list[str]) -> dict[str, Any]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=[*overrides, "run_dir=runs/x", "name=x"])
    data = OmegaConf.to_container(cfg, resolve=False)
    data.pop("hydra", None)
    return data


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the sections (lists and the data sets are leaves)."""
    if not isinstance(node, dict) or prefix in ("data.train", "data.eval"):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else key
        out.update(flat(value, dotted) if isinstance(value, dict) and value else {dotted: value})
    return out


def file_keys(path: Path) -> dict[str, Any]:
    """The dotted keys a YAML file sets, in the global package."""
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("defaults", None)
    raw.pop("hydra", None)
    group = path.parent.name
    prefix = "" if group in GLOBAL_GROUPS or path.parent == CONFIGS else group
    return flat(raw, prefix) if raw else {}


def group_options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]


def experiment_groups(name: str) -> list[str]:
    """The group overrides an experiment makes (`- override /model: local` -> `model=local`)."""
    raw = yaml.safe_load((CONFIGS / "experiment" / f"{name}.yaml").read_text()) or {}
    out = []
    for entry in raw.get("defaults", []):
        if isinstance(entry, str) and entry.startswith("/experiment/"):  # a preset built on another
            out += experiment_groups(entry.removeprefix("/experiment/"))
        elif isinstance(entry, dict):
            for key, value in entry.items():
                out.append(f"{key.replace('override /', '')}={value}")
    return out


def parent_experiment(name: str) -> str | None:
    """The preset ``name`` builds on (``- /experiment/<parent>`` in its defaults), if any."""
    raw = yaml.safe_load((CONFIGS / "experiment" / f"{name}.yaml").read_text()) or {}
    parents = [e.removeprefix("/experiment/") for e in raw.get("defaults", [])
               if isinstance(e, str) and e.startswith("/experiment/")]
    return parents[0] if parents else None


def selected_option(group: str, overrides: list[str]) -> str:
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    chosen = {k: v for entry in train["defaults"] if isinstance(entry, dict) for k, v in entry.items()}
    for override in overrides:
        key, _, value = override.partition("=")
        chosen[key] = value
    return chosen[group]


def test_generated_files_are_fresh_and_base_yaml_holds_the_schema_defaults():
    assert config_reference.main(["--check"]) == 0, "run `python -m cispo.config_reference`"
    base = yaml.safe_load(config_reference.BASE_YAML.read_text())
    assert base == config_reference.defaults_tree()
    assert not set(flat(base)) & DERIVED_KEYS
    reference = config_reference.REFERENCE_MD.read_text()
    for key in flat(config_reference.defaults_tree()):
        assert f"| `{key}` |" in reference, key


@pytest.mark.parametrize("group,option", group_options())
def test_every_group_option_composes_validates_and_repeats_no_default(group, option):
    overrides = [f"{group}={option}", *NEEDS.get((group, option), [])]
    cfg = load_config(OmegaConf.to_container(OmegaConf.create(compose_raw(["~experiment", *overrides])), resolve=True))
    assert getattr(cfg, group) is not None
    defaults = flat(config_reference.defaults_tree())
    repeated = {k: v for k, v in file_keys(CONFIGS / group / f"{option}.yaml").items()
                if k in defaults and defaults[k] == v}
    assert not repeated, f"configs/{group}/{option}.yaml repeats schema defaults: {repeated}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_validates_and_sets_only_what_it_changes(name):
    groups = experiment_groups(name)
    needs = ["model.path=/models/any"] if "model=local" in groups else []
    full = compose_raw([f"experiment={name}", *needs])
    load_config(OmegaConf.to_container(OmegaConf.create(full), resolve=True))
    parent = parent_experiment(name)
    without = flat(compose_raw([f"experiment={parent}" if parent else "~experiment", *needs]
                               if parent else ["~experiment", *groups, *needs]))
    repeated = {k: v for k, v in file_keys(CONFIGS / "experiment" / f"{name}.yaml").items()
                if k in without and without[k] == v}
    assert not repeated, f"configs/experiment/{name}.yaml repeats values it gets anyway: {repeated}"


def test_no_default_value_is_overridden_by_every_experiment_that_uses_it():
    """A value that every preset replaces never takes effect (train.yaml once set total_steps this way).
    Checked for train.yaml and the group options it selects by default; a non-default option (rollout=gpu)
    also serves users who select it without any preset, so its values are never dead."""
    per_experiment = {name: (experiment_groups(name), file_keys(CONFIGS / "experiment" / f"{name}.yaml"))
                      for name in EXPERIMENTS}
    dead = []
    files = [CONFIGS / "train.yaml"] + [CONFIGS / g / f"{selected_option(g, [])}.yaml" for g in GROUPS]
    for path in files:
        users = [keys for groups, keys in per_experiment.values()
                 if path.parent == CONFIGS or selected_option(path.parent.name, groups) == path.stem]
        for key in file_keys(path):
            if users and all(key in keys for keys in users):
                dead.append(f"{path.relative_to(CONFIGS)}: {key}")
    assert not dead, f"set in a file but overridden by every experiment that uses it: {dead}"


def test_a_derived_key_in_the_config_is_refused_with_its_name():
    from cispo.config import ConfigError

    raw = OmegaConf.to_container(OmegaConf.create(compose_raw(["experiment=quick", "+trainer.seed=3"])), resolve=True)
    with pytest.raises(ConfigError, match=r"trainer\.seed=3 is derived"):
        load_config(raw)


@pytest.mark.parametrize("eval_group", ["aime", "heldout"])
def test_the_evaluate_config_composes_from_the_same_defaults(eval_group):
    from cispo.cli.eval import load_eval_config

    GlobalHydra.instance().clear()
    data_group = "math" if eval_group == "aime" else "arithmetic"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("evaluate", overrides=["model_path=/models/any", f"eval={eval_group}", f"data={data_group}"])
    raw = OmegaConf.to_container(cfg, resolve=True)
    _, ev, _, engine, sampling = load_eval_config(raw)
    expected_k = 32 if eval_group == "aime" else 4
    assert (ev.k, ev.temperature) == (expected_k, 1.0)
    assert engine.omp_threads_bind == "all" and sampling.max_tokens == 256


@pytest.mark.parametrize("overrides,message", [
    (["++algorithm.advantage_options={bogus: 1}"],
     "algorithm.advantage_options: unknown option(s) ['bogus']; allowed: batch_std, norm_by_std, std_unbiased"),
    (["++algorithm.advantage_options={batch_std: 2}"], "algorithm.advantage_options.batch_std=2: expected true or false"),
    (["algorithm.advantage=dr_grpo", "++algorithm.advantage_options={batch_std: true}"],
     "algorithm.advantage_options: unknown option(s) ['batch_std']; allowed: none"),
    (["algorithm=dapo", "++trainer.loss_options={dual_clip: 0.5}"],
     "trainer.loss_options.dual_clip=0.5: expected null or a number > 1"),
    (["++trainer.loss_options={unified_mask: true}"], "trainer.loss_options.unified_mask=True needs mask_eps_low"),
    (["trainer.loss=gspo"], "trainer.loss='gspo' but algorithm.name='cispo'"),
    (["trainer.kl_clamp=0"], "trainer.kl_clamp=0.0: expected null or a number > 0"),
    (["trainer.mini_batch_size=5"], "trainer.mini_batch_size=5: expected a divisor of trainer.batch_size=16"),
    (["algorithm.old_log_probs=rollout", "rollout.engine.logprobs_mode=processed_logprobs"],
     "algorithm.old_log_probs=rollout needs rollout.engine.logprobs_mode=raw_logprobs"),
    (["eval.sets=[aime2024]"], "eval.sets=['aime2024']: ['aime2024'] not defined in data.eval"),
])
def test_a_bad_value_stops_the_run_at_load_with_the_key_and_what_is_allowed(overrides, message):
    from cispo.config import ConfigError

    raw = OmegaConf.to_container(OmegaConf.create(compose_raw(["experiment=quick", *overrides])), resolve=True)
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    assert message in str(err.value)


def test_a_run_may_train_with_any_registered_loss_when_labelled_by_it():
    raw = OmegaConf.to_container(OmegaConf.create(compose_raw(["experiment=quick", "trainer.loss=gspo",
                                                               "algorithm.name=gspo"])), resolve=True)
    assert load_config(raw).trainer.loss == "gspo"


def test_derived_keys_are_computed_before_the_sections_are_built():
    """batch = prompts x G, the LR schedule's length = RL steps x epochs x mini-batches per batch; a
    mini-batch size that divides the run's batch but not the trainer's default one (64) is fine."""
    from cispo.config.root import derived_values

    raw = {"prompts_per_step": 4, "group_size": 12, "total_steps": 10, "seed": 3,
           "trainer": {"mini_batch_size": 12, "ppo_epochs": 2}, "model": {"path": "tiny", "dtype": "float32"}}
    assert derived_values(raw) == {
        "trainer.batch_size": 48, "trainer.seed": 3, "trainer.total_steps": 10 * 2 * 4,
        "rollout.sampling.n": 12, "rollout.sampling.seed": 3, "rollout.engine.seed": 3,
        "rollout.engine.model": "tiny", "rollout.engine.dtype": "float32",
    }
    cfg = load_config({**raw, "eval": {"sets": []}})
    assert (cfg.trainer.batch_size, cfg.trainer.total_steps, cfg.rollout.sampling.n) == (48, 80, 12)


@pytest.mark.parametrize("data", ["arithmetic", "gsm8k", "math", "deepmath", "code"])
def test_each_data_preset_brings_its_own_eval_sets(data):
    """``data=gsm8k`` alone evaluates on gsm8k (it used to be refused: the eval set stayed `heldout`);
    a named eval set still wins."""
    def resolved(overrides: list[str]) -> dict[str, Any]:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = compose("train", overrides=[*overrides, "run_dir=runs/x", "name=x"])
        return {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}

    raw = resolved([f"data={data}"])
    cfg = load_config(raw)
    assert cfg.eval.sets == list(raw["data"]["eval"]) and cfg.eval.sets
    named = next(iter(raw["data"]["eval"]))
    assert load_config(resolved([f"data={data}", f"eval.sets=[{named}]"])).eval.sets == [named]
