"""The RL loop: rollout -> rewards -> dynamic sampling -> advantages -> update -> weight sync ->
eval -> checkpoint. What it drives is built in :mod:`cispo.driver.components`; this file is the algorithm,
readable top to bottom. With ``rollout.mode=async`` the rollout half runs ahead in a producer thread
(:mod:`cispo.driver.pipeline`) and the trainer takes its batches, at most ``algorithm.max_staleness``
policy versions old."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cispo.algorithms import compute_advantages
from cispo.driver.batching import build_train_batch
from cispo.checkpoint import GracefulStop
from cispo.driver.components import Components, build_components
from cispo.config import TrainConfig
from cispo.driver.dynamic_sampling import GroupCollector, round_size
from cispo.driver.pipeline import RolloutProducer, split_by_staleness, staleness_metrics
from cispo.evaluation.scoring import score_rollouts
from cispo.driver.step_metrics import eval_metrics, rollout_metrics
from cispo.tracking import PhaseTimer
from rewards import RewardResult
from rollout.types import RolloutResult

log = logging.getLogger(__name__)


@dataclass
class Group:
    """The G responses of one prompt with their shaped rewards and verdicts."""

    results: list[RolloutResult]
    rewards: list[float]
    verdicts: list[RewardResult]
    prompt_index: int = -1
    """The prompt's row in the training set."""
    policy_version: int = 0
    """The policy (number of updates) whose weights generated every response of the group."""


def sampling_seed(run_seed: int, step: int, round_index: int) -> int:
    """A fresh, reproducible vLLM seed per generation round (a resumed run replays the same samples)."""
    return (run_seed * 1_000_003 + step * 1_009 + round_index * 7_919) % (2**31 - 1)


def generate_groups(c: Components, step: int, round_index: int, num_prompts: int, timer: PhaseTimer) -> list[Group]:
    indices = c.sampler.sample_indices(num_prompts)
    rows = [c.sampler.items[i] for i in indices]
    sampling = c.train_sampling(sampling_seed(c.cfg.seed, step, round_index))
    with timer.phase("generate"):
        results, version = c.state.versions.generate(c.rollout, c.encode(rows), sampling)
    n = sampling.n
    with timer.phase("score"):
        rewards, verdicts = score_rollouts([row for row in rows for _ in range(n)], results, c.cfg.reward)
    groups = [Group(results[i * n:(i + 1) * n], rewards[i * n:(i + 1) * n], verdicts[i * n:(i + 1) * n],
                    prompt_index=index, policy_version=version) for i, index in enumerate(indices)]
    retire_solved_prompts(c, groups)
    return groups


def retire_solved_prompts(c: Components, groups: list[Group]) -> None:
    """ScaleRL's no-positive-resampling: a prompt whose group passed at the threshold leaves the pool."""
    threshold = c.cfg.algorithm.no_positive_resampling
    if threshold is None:
        return
    for g in groups:
        if sum(v.correct for v in g.verdicts) >= threshold * len(g.verdicts):
            c.sampler.retire(g.prompt_index)


def collect_groups(c: Components, step: int, timer: PhaseTimer) -> tuple[list[Group], dict[str, float]]:
    """G responses per prompt, over several rounds when dynamic sampling drops zero-variance groups,
    until ``prompts_per_step`` groups are kept or ``max_gen_rounds`` is hit (then: what we have).
    Each round's size comes from ``algorithm.refill_sizing`` (see :func:`cispo.driver.dynamic_sampling.round_size`);
    the keep-rate estimate is updated after every round and decayed once per step."""
    cfg, alg = c.cfg, c.cfg.algorithm
    collector: GroupCollector[Group] = GroupCollector(cfg.prompts_per_step, alg.dynamic_sampling)
    cap = math.ceil(alg.max_round_factor * cfg.prompts_per_step)
    estimate_at_start = c.state.keep_rate.rate
    generated: list[Group] = []
    generate_before = timer.seconds.get("generate", 0.0)
    for round_index in range(alg.max_gen_rounds):
        wanted = round_size(round_index, collector.missing, cfg.prompts_per_step, sizing=alg.refill_sizing,
                            estimate=c.state.keep_rate, oversample=alg.oversample, z=alg.refill_z, cap=cap)
        groups = generate_groups(c, step, round_index, wanted, timer)
        generated += groups
        informative_before = collector.informative
        collector.add(groups, [g.rewards for g in groups])
        c.state.keep_rate.observe(len(groups), collector.informative - informative_before)
        if collector.full:
            break
    c.state.keep_rate.end_step()
    if collector.missing:
        log.warning("step %d: %d/%d groups with reward variance after %d rounds; training on those",
                    step, len(collector.kept), cfg.prompts_per_step, collector.rounds)
    metrics = rollout_metrics([r for g in generated for r in g.results], [x for g in generated for x in g.rewards],
                              [v for g in generated for v in g.verdicts])
    generate_s = timer.seconds.get("generate", 0.0) - generate_before
    metrics["dynamic_sampling/keep_rate_estimate"] = estimate_at_start
    if collector.kept:  # wall-clock: volatile, hence under perf/
        metrics["perf/generate_s_per_kept_group"] = generate_s / len(collector.kept)
    return collector.kept, metrics | collector.metrics()


def train_on_groups(c: Components, groups: list[Group], timer: PhaseTimer,
                    staleness: list[int] | None = None) -> dict[str, float]:
    """Advantages, one update, then the new weights to the engines. ``staleness[i]``: how many
    versions behind the trainer group i's policy is (asynchronous mode; reported by the update)."""
    results, row_staleness = [], []
    for group_id, group in enumerate(groups):
        for r in group.results:
            r.group_id = group_id
            results.append(r)
            row_staleness.append(0 if staleness is None else staleness[group_id])
    rewards = torch.tensor([x for g in groups for x in g.rewards], dtype=torch.float64)
    advantages = compute_advantages(c.cfg.algorithm.advantage, rewards, [r.group_id for r in results],
                                    eps=c.cfg.algorithm.advantage_eps, **c.cfg.algorithm.advantage_options)
    # The trainer takes whole mini-batches: a short batch (dynamic sampling hit its cap) is cut to a
    # multiple of the mini-batch size; fewer rows than one mini-batch skip the update.
    usable = len(results) // c.cfg.trainer.mini_batch_size * c.cfg.trainer.mini_batch_size
    if usable == 0:
        log.warning("%d responses < trainer.mini_batch_size=%d: no update this step", len(results),
                    c.cfg.trainer.mini_batch_size)
        c.state.versions.advance()  # the next version has the same weights
        return {"actor/update_skipped": 1.0}
    batch = build_train_batch(results[:usable], advantages[:usable], pad_token_id=c.pad_token_id,
                              mask_truncated=c.cfg.reward.overlong_filtering)
    if staleness is not None:
        batch.staleness = torch.tensor(row_staleness[:usable], dtype=torch.long)
    if c.cfg.algorithm.old_log_probs == "rollout":
        batch.old_log_probs = batch.rollout_log_probs  # vLLM's log-probs of its own samples
    else:
        with timer.phase("old_log_probs"):
            batch.old_log_probs = c.trainer.compute_log_probs(batch)
    with timer.phase("update"):
        metrics = c.trainer.update(batch)
    with timer.phase("sync"):
        publish_weights(c)
    return metrics | {"advantage/abs_mean": advantages.abs().mean().item(), "actor/update_skipped": 0.0,
                      "actor/rows": float(usable)}


def publish_weights(c: Components) -> None:
    """Synchronous: load the new weights into the engines and wait (``c.weights``, the channel
    ``rollout.group.weight_sync`` chose). Asynchronous: queue them behind the generations already sent
    and go on (at most one update in flight)."""
    if c.cfg.rollout.mode == "async":
        if c.state.pending_weights is not None:
            c.weights.finish(c.state.pending_weights)
        exported = c.weights.export()  # outside the version lock: the producer keeps submitting meanwhile
        c.state.pending_weights = c.state.versions.push(lambda: c.weights.queue(exported))
    else:
        c.weights.load()
        c.state.versions.advance()


class SyncBatches:
    """Step s's batch, generated now with the newest weights."""

    def __init__(self, c: Components) -> None:
        self.c = c

    def take(self, step: int, timer: PhaseTimer) -> tuple[list[Group], list[int] | None, dict[str, float], dict]:
        groups, metrics = collect_groups(self.c, step, timer)
        return groups, None, metrics, self.c.data_state()

    def close(self) -> None:
        pass


class AsyncBatches:
    """Step s's batch from the producer thread, generated up to ``max_staleness`` versions ago."""

    def __init__(self, c: Components) -> None:
        self.c, self.k = c, c.cfg.algorithm.max_staleness
        self.producer: RolloutProducer[Group] = RolloutProducer(
            self._produce, c.data_state, c.state.versions, first=c.state.start_step + 1, last=c.cfg.total_steps,
            max_staleness=self.k).start()

    def _produce(self, step: int) -> tuple[list[Group], dict[str, float]]:
        timer = PhaseTimer()  # the producer's own: its phases overlap the trainer's
        timer.start_step()
        groups, metrics = collect_groups(self.c, step, timer)
        return groups, metrics | {f"async/{name}_s": secs for name, secs in timer.seconds.items()}

    def take(self, step: int, timer: PhaseTimer) -> tuple[list[Group], list[int] | None, dict[str, float], dict]:
        with timer.phase("wait_rollout"):
            batch = self.producer.next_batch(step)
        trainer_version = step - 1
        keep, drop = split_by_staleness([g.policy_version for g in batch.groups], trainer_version, self.k)
        if drop:
            log.warning("step %d: %d groups older than algorithm.max_staleness=%d dropped", step, len(drop), self.k)
        groups = [batch.groups[i] for i in keep]
        staleness = [trainer_version - g.policy_version for g in groups]
        metrics = batch.metrics | staleness_metrics(staleness, len(drop), self.producer.queued_batches, self.k)
        metrics["async/rollout_idle_s"] = batch.rollout_idle_s
        metrics["async/trainer_idle_s"] = timer.seconds.get("wait_rollout", 0.0)
        return groups, staleness, metrics, batch.data_state

    def close(self) -> None:
        self.producer.close()


def run_eval(c: Components) -> dict[str, float]:
    return eval_metrics({name: c.evaluate(name) for name in c.cfg.eval.sets})


def train(cfg: TrainConfig, on_built: Callable[[Components], None] | None = None) -> Path:
    """Runs (or resumes) a training job; returns the run folder. ``on_built`` sees the components
    before the first step (`cispo.driver.supervisor` uses it)."""
    c = build_components(cfg)
    with c, GracefulStop() as stop:
        if on_built is not None:
            on_built(c)
        run_steps(c, stop)
    return c.run_dir


def run_steps(c: Components, stop: GracefulStop) -> None:
    cfg = c.cfg
    progress = c.logger.start_progress(c.state.start_step)
    if c.state.start_step == 0 and cfg.eval.at_start:
        c.logger.log(0, run_eval(c))
    batches = AsyncBatches(c) if cfg.rollout.mode == "async" else SyncBatches(c)
    try:
        for step in range(c.state.start_step + 1, cfg.total_steps + 1):
            show_phase = (lambda name, step=step: progress.phase(step, name)) if progress else None
            timer = PhaseTimer(elapsed=c.state.elapsed, on_phase=show_phase)
            timer.start_step()
            groups, staleness, metrics, data_state = batches.take(step, timer)
            c.batch_log.write(step, groups, staleness)
            if groups:
                metrics |= train_on_groups(c, groups, timer, staleness)
            else:
                c.state.versions.advance()
            last = step == cfg.total_steps
            if (cfg.eval.every and step % cfg.eval.every == 0) or last:
                with timer.phase("eval"):
                    metrics |= run_eval(c)
            # Read the flag once: a signal landing after the checkpoint decision must not end the
            # run without a checkpoint of its last step; it stops the loop after the next step.
            stopping = stop.requested
            if (cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0) or last or stopping:
                with timer.phase("checkpoint"):
                    c.save(step, metrics, data_state)
            metrics |= timer.end_step()
            c.state.elapsed = metrics["time/total_elapsed"]
            c.logger.log(step, metrics)
            if stopping:
                log.warning("stopping after step %d on %s (checkpoint saved)", step, stop.signal_name)
                break
    finally:
        batches.close()
