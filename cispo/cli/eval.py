"""``python -m cispo.eval model=<folder> eval=aime``: k samples per problem with vLLM; avg@k,
pass@k, maj@k, the per-problem table, lengths and truncation; written as JSON and markdown."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from cispo.cli.train import CONFIG_DIR
from cispo.cli.user_errors import one_line_errors
from cispo.config import ConfigError
from rollout.models import ModelError

log = logging.getLogger("cispo.eval")


def resolve_model(path: str) -> str:
    """An HF folder as is; a checkpoint folder -> its model; a run folder -> its latest checkpoint's."""
    p = Path(path).expanduser()
    if not p.exists():
        return path  # a built-in name (tiny, smollm2-135m): rollout.models resolves or rejects it
    if (p / "config.json").is_file():
        return str(p)
    if (p / "trainer" / "model" / "config.json").is_file():
        return str(p / "trainer" / "model")
    if (p / "checkpoints").is_dir():
        from cispo.checkpoint import CheckpointManager

        latest = CheckpointManager(p, keep_last=None, cleanup=False).find_resume("auto")  # the run may be live
        if latest is not None:
            return str(latest / "trainer" / "model")
    raise ModelError(f"model={path!r}: not an HF model folder, a checkpoint folder or a run folder with checkpoints")


def markdown_report(name: str, metrics: Any, settings: dict[str, Any]) -> str:
    flat = metrics.flat()
    lines = [f"# {name}", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in flat.items()]
    lines += ["", "| problem | gold | correct | majority answer | votes |", "|---|---|---|---|---|"]
    lines += [f"| {r.id} | {r.gold} | {r.correct}/{r.samples} | {r.majority_answer} | {r.majority_votes} |"
              for r in metrics.table]
    return "\n".join(lines) + "\n"


def load_eval_config(raw: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
    """The typed sections an evaluation reads (data, eval, reward, engine, sampling), checked before any
    engine starts."""
    from cispo.data import DataConfig
    from cispo.config.sections import EvalConfig
    from cispo.config.schema import from_mapping
    from rewards import RewardConfig
    from rollout.config import EngineConfig, SamplingConfig

    data = from_mapping(DataConfig, raw["data"], "data")
    ev = from_mapping(EvalConfig, raw["eval"], "eval")
    reward = from_mapping(RewardConfig, raw["reward"], "reward")
    engine_cfg = from_mapping(EngineConfig, raw["rollout"]["engine"], "rollout.engine")
    sampling = from_mapping(SamplingConfig, raw["rollout"]["sampling"], "rollout.sampling")
    if ev.sets is None:  # every set the data preset defines
        ev = dataclasses.replace(ev, sets=list(data.eval))
    missing = [s for s in ev.sets if s not in data.eval]
    if missing:
        raise ConfigError(f"eval.sets={ev.sets}: {missing} not defined in data.eval ({sorted(data.eval)})")
    return data, ev, reward, engine_cfg, sampling


def run_eval(raw: dict[str, Any]) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from cispo.data import load_prompt_dataset
    from cispo.evaluation.runner import evaluate_dataset
    from rollout.engine import RolloutEngine

    data, ev, reward, engine_cfg, sampling = load_eval_config(raw)
    model = resolve_model(str(raw["model_path"]))
    engine_cfg = dataclasses.replace(engine_cfg, model=model, dtype=raw["dtype"], seed=raw["seed"])
    sampling = dataclasses.replace(sampling, n=ev.k, temperature=ev.temperature, top_p=ev.top_p,
                                   max_tokens=ev.max_tokens, seed=raw["seed"])
    out_dir = Path(raw["out_dir"] or Path("eval_results") / Path(model).name)
    datasets = {}  # read before the engine starts: a bad file or row fails in a second, not after a model load
    for name in ev.sets:
        spec = data.eval[name]
        if raw.get("limit"):
            spec = dataclasses.replace(spec, limit=int(raw["limit"]))
        datasets[name] = load_prompt_dataset(spec, name=name)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = RolloutEngine(engine_cfg)
    console = Console()
    summary: dict[str, Any] = {}
    try:
        for name, dataset in datasets.items():
            metrics = evaluate_dataset(engine, engine.tokenizer, dataset, prompt_cfg=data.prompt, sampling=sampling,
                                       reward_cfg=reward)
            settings = {"model": model, "k": ev.k, "temperature": ev.temperature, "top_p": ev.top_p,
                        "max_tokens": ev.max_tokens, "seed": raw["seed"], "problems": len(dataset)}
            (out_dir / f"{name}.json").write_text(json.dumps({"settings": settings, **metrics.as_dict()}, indent=1))
            (out_dir / f"{name}.md").write_text(markdown_report(name, metrics, settings))
            summary[name] = metrics.flat()
            table = Table(title=f"{name} ({len(dataset)} problems, k={ev.k})")
            for key in summary[name]:
                table.add_column(key)
            table.add_row(*(f"{v:.4f}" for v in summary[name].values()))
            console.print(table)
    finally:
        engine.close()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    console.print(f"results in {out_dir}")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    with one_line_errors(log):
        run_eval(OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    # `model=<folder>` reads naturally, but `model` is also the training config group: pass it as
    # `model_path` so Hydra does not look for configs/model/<folder>.yaml.
    sys.argv = [("model_path=" + a[len("model="):]) if a.startswith("model=") else a for a in sys.argv]
    _main()


if __name__ == "__main__":
    sys.exit(main())
