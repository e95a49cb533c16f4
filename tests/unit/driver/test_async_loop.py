"""The asynchronous loop (rollout.mode=async) with stand-in workers that behave like Ray actors: each
runs its calls one at a time in the order they were sent, on its own thread. The stand-in engine
stamps every response with the weights it actually had loaded (in its log-probs), so the driver's
policy-version bookkeeping is checked against what really happened, not against itself. The real
workers are exercised in tests/integration/test_async_train.py."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import random
import signal
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cispo.driver.batch_log import BatchLog, read_batches
from cispo.checkpoint import GracefulStop
from cispo.config import load_config
from cispo.data import PromptRow, PromptSampler
from cispo.driver.dynamic_sampling import KeepRateEstimate
from cispo.driver.loop import run_steps
from cispo.driver.state import LoopState
from cispo.driver.weights import ObjectStoreBroadcast
from cispo.driver.pipeline import PolicyVersions, RolloutProducer, split_by_staleness, staleness_metrics
from rollout.types import RolloutResult

NUM_PROMPTS = 40
LOGPROB_PER_VERSION = -0.01


def version_log_prob(version: int) -> float:
    """What the stand-in engine reports as each token's log-prob under weights `version`."""
    return LOGPROB_PER_VERSION * (version + 1)


class ActorThread:
    """Runs submitted calls one at a time, in submission order (as a Ray actor does)."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, future = self.calls.get()
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001
                future.set_exception(e)

    def send(self, fn) -> Future:
        future: Future = Future()
        self.calls.put((fn, future))
        return future


class StandInEngine:
    """Answers ``\\boxed{<digit>}``; whether a sample is right depends on the prompt, the seed, the sample
    index and the weights loaded, so a response generated with other weights differs."""

    def __init__(self, version: int = 0, delay_s: float = 0.0, rewards_follow_weights: bool = True) -> None:
        self.actor = ActorThread()
        self.loaded = version
        # False: rewards depend on the prompt, seed and sample only, so which groups dynamic sampling keeps
        # does not depend on which (racing) policy version generated them.
        self.rewards_follow_weights = rewards_follow_weights
        self.delay_s = delay_s
        self.generated_with: list[int] = []

    def _generate(self, prompts, sampling) -> list[RolloutResult]:
        time.sleep(self.delay_s * random.random())
        out = []
        for p in prompts:
            index = p[0] - 1000
            for j in range(sampling.n):
                weights = self.loaded if self.rewards_follow_weights else 0
                h = int(hashlib.sha256(f"{index}/{sampling.seed}/{j}/{weights}".encode()).hexdigest(), 16)
                answer = index % 10 if h % 3 == 0 else (index + 1) % 10
                out.append(RolloutResult(prompt_ids=list(p), response_ids=[7, 8, 2],
                                         logprobs=np.full(3, version_log_prob(self.loaded)), finish_reason="stop",
                                         group_id=0, text=f"\\boxed{{{answer}}}", sample_index=j))
        self.generated_with.append(self.loaded)
        return out

    def _load(self, weights) -> dict:
        self.loaded = weights[1]
        return {"total_s": 0.0}

    def submit(self, prompts, sampling):
        return self.actor.send(lambda: self._generate(prompts, sampling))

    def collect(self, pending):
        return pending.result(timeout=30)

    def generate(self, prompts, sampling):
        return self.collect(self.submit(prompts, sampling))

    def submit_weights(self, weights):
        return self.actor.send(lambda: self._load(weights))

    def finish_weights(self, pending):
        return pending.result(timeout=30)

    def update_weights(self, weights):
        return self.finish_weights(self.submit_weights(weights))

    def shutdown(self):
        pass


class StandInTrainer:
    """Records each batch; its version is the number of updates it made."""

    def __init__(self, version: int = 0, delay_s: float = 0.0) -> None:
        self.version = version
        self.delay_s = delay_s
        self.batches: list = []

    def compute_log_probs(self, batch):
        return torch.full(batch.input_ids.shape, version_log_prob(self.version))

    def update(self, batch):
        time.sleep(self.delay_s * random.random())
        self.batches.append((self.version, batch))
        self.version += 1
        return {"actor/loss": 0.0}

    def export_weights_ref(self):
        return ("weights", self.version)

    def save(self, directory):
        pass

    def load(self, directory):
        pass

    def shutdown(self):
        pass


class Recorder:
    def __init__(self) -> None:
        self.records: dict[int, dict] = {}
        self.progress = None

    def start_progress(self, start_step):
        return None

    def log(self, step, metrics):
        self.records[step] = metrics


class Killed(Exception):
    pass


class KilledAfter(Recorder):
    """The process dies right after step `step` was logged (its checkpoint is written)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log(self, step, metrics):
        super().log(step, metrics)
        if step == self.step:
            self.act()

    def act(self) -> None:
        raise Killed


def rows() -> list[PromptRow]:
    return [PromptRow(prompt=f"q{i}", ground_truth=str(i % 10), reward_kind="math", data_source="test", id=f"p{i}")
            for i in range(NUM_PROMPTS)]


def make_config(mode: str, k: int, total_steps: int, dynamic_sampling: bool = True, **algorithm):
    return load_config({
        "total_steps": total_steps, "prompts_per_step": 4, "group_size": 4,
        "rollout": {"mode": mode},
        "algorithm": {"max_staleness": k, "old_log_probs": "rollout", "dynamic_sampling": dynamic_sampling,
                      **algorithm},
        "trainer": {"mini_batch_size": 4},
        "eval": {"at_start": False, "every": 0, "sets": []},
        "checkpoint": {"save_every": 1},
    })


def components(cfg, tmp_path, *, resume: dict | None = None, delay_s: float = 0.0,
               rewards_follow_weights: bool = True) -> SimpleNamespace:
    start = resume["step"] if resume else 0
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = LoopState(start, 0.0, KeepRateEstimate(cfg.algorithm.keep_rate_memory), PolicyVersions(start))
    rollout, trainer = StandInEngine(start, delay_s, rewards_follow_weights), StandInTrainer(start, delay_s)
    c = SimpleNamespace(cfg=cfg, pad_token_id=0, state=state, rollout=rollout, trainer=trainer,
                        weights=ObjectStoreBroadcast(trainer, rollout),
                        sampler=PromptSampler(rows(), seed=3), logger=Recorder(),
                        batch_log=BatchLog(tmp_path, start if resume else None), saved={})
    if resume:
        c.sampler.load_state_dict(resume["sampler"])
        c.state.keep_rate.load_state_dict(resume["keep_rate"])
    c.encode = lambda batch: [[1000 + int(r.id[1:])] for r in batch]
    c.train_sampling = lambda seed: dataclasses.replace(cfg.rollout.sampling, seed=seed)
    c.evaluate = lambda name: pytest.fail("no eval sets")

    def save(step, metrics=None, data_state=None):
        c.saved[step] = {"step": step, **(data_state or {"sampler": c.sampler.state_dict(),
                                                          "keep_rate": c.state.keep_rate.state_dict()})}
    c.save = save
    c.data_state = lambda: {"sampler": c.sampler.state_dict(), "keep_rate": c.state.keep_rate.state_dict()}
    return c


def run(c) -> SimpleNamespace:
    with GracefulStop() as stop:
        run_steps(c, stop)
    return c


def batch_versions(batch) -> list[int]:
    """The generating version of each row, read from the engine's log-probs (not from the driver)."""
    first = batch.rollout_log_probs[batch.response_mask.bool()].view(len(batch), -1)[:, 0]
    return [round(float(x) / LOGPROB_PER_VERSION) - 1 for x in first]


# ---------------------------------------------------------------------------------------------------

def test_k0_async_trains_on_exactly_the_batches_of_the_sync_loop(tmp_path):
    sync = run(components(make_config("sync", 0, 5), tmp_path / "s"))
    asyn = run(components(make_config("async", 0, 5), tmp_path / "a", delay_s=0.01))
    assert len(sync.trainer.batches) == len(asyn.trainer.batches) == 5
    for (v1, b1), (v2, b2) in zip(sync.trainer.batches, asyn.trainer.batches):
        assert v1 == v2
        for f in dataclasses.fields(b1):
            x, y = getattr(b1, f.name), getattr(b2, f.name)
            if f.name == "staleness":
                assert x is None and y.tolist() == [0] * len(b2)
            else:
                assert (x is None and y is None) or torch.equal(x, y), f.name
    assert read_batches(tmp_path / "s") == [{k: v for k, v in r.items() if k != "staleness"}
                                            for r in read_batches(tmp_path / "a")]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_staleness_is_bounded_and_tagged_with_the_weights_that_really_generated(tmp_path, k):
    c = run(components(make_config("async", k, 8), tmp_path, delay_s=0.02))
    seen = set()
    for step, (trainer_version, batch) in enumerate(c.trainer.batches, start=1):
        assert trainer_version == step - 1
        truth = [trainer_version - v for v in batch_versions(batch)]
        assert batch.staleness.tolist() == truth  # the driver's tags equal what the engine had loaded
        assert all(0 <= s <= k for s in truth)
        seen |= set(truth)
        # pi_old is the engine's own log-prob of each token: the loss's IS weight is pi_theta / pi_behaviour.
        assert torch.equal(batch.old_log_probs, batch.rollout_log_probs)
        metrics = c.logger.records[step]
        assert metrics["async/staleness_max"] == max(truth)
        assert metrics["async/staleness_mean"] == pytest.approx(sum(truth) / len(truth))
    assert max(seen) >= 1  # the producer did run ahead


def test_is_weight_seen_by_the_loss_is_current_over_behaviour_policy():
    """The trainer's per-staleness IS statistics against exp(log pi_theta - log pi_behaviour) in float64."""
    from cispo.trainer.metrics import StalenessISAccumulator

    torch.manual_seed(0)
    behaviour = -torch.rand(3, 5, dtype=torch.float64) * 3
    current = behaviour + torch.randn(3, 5, dtype=torch.float64) * 0.3
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    staleness = torch.tensor([0, 2, 2])
    acc = StalenessISAccumulator(eps_high=0.28)
    acc.add(current.float(), behaviour.float(), mask, staleness)
    out = acc.result()
    for s, rows_ in ((0, [0]), (2, [1, 2])):
        r = torch.cat([(current[i] - behaviour[i]).exp()[mask[i].bool()] for i in rows_])
        assert out[f"staleness/is_weight_mean/{s}"] == pytest.approx(float(r.mean()), rel=1e-5)
        assert out[f"staleness/is_weight_max/{s}"] == pytest.approx(float(r.max()), rel=1e-5)
        assert out[f"staleness/is_weight_above_cap_frac/{s}"] == pytest.approx(float((r > 1.28).double().mean()))
        assert out[f"staleness/tokens/{s}"] == r.numel()
    assert "staleness/tokens/1" not in out


@pytest.mark.parametrize("dynamic_sampling", [True, False])
def test_kill_and_resume_neither_skips_nor_repeats_prompts(tmp_path, dynamic_sampling):
    """NeMo-RL's async resume skipped ~30% of prompts: the checkpoint must hold the data position of the
    batch it trained on, not of the batches the producer had already drawn ahead."""
    k = 3
    # Which version generates a batch is a race (the producer runs ahead): with dynamic sampling, rewards
    # that followed it would make the kept groups, hence the two runs' prompts, differ by timing alone.
    fixed = {"rewards_follow_weights": not dynamic_sampling}
    full = run(components(make_config("async", k, 8, dynamic_sampling), tmp_path / "full", delay_s=0.01, **fixed))
    first = components(make_config("async", k, 8, dynamic_sampling), tmp_path / "cut", delay_s=0.01, **fixed)
    first.logger = KilledAfter(3)
    with pytest.raises(Killed):
        run(first)
    time.sleep(0.2)  # the producer had drawn ahead before the kill
    assert first.sampler.consumed > first.saved[3]["sampler"]["consumed"]
    # The checkpoint holds batch 3's position, however far the producer had run: as the full run's.
    assert first.saved[3]["sampler"] == full.saved[3]["sampler"]
    resumed = run(components(make_config("async", k, 8, dynamic_sampling), tmp_path / "cut",
                             resume=first.saved[3], delay_s=0.01, **fixed))
    assert resumed.trainer.batches[0][0] == 3
    full_prompts = [r["prompts"] for r in read_batches(tmp_path / "full")]
    cut_prompts = [r["prompts"] for r in read_batches(tmp_path / "cut")]
    assert [r["step"] for r in read_batches(tmp_path / "cut")] == list(range(1, 9))
    if not dynamic_sampling:
        # Every drawn prompt is trained on: identical prompt sequence, each prompt once per epoch.
        assert cut_prompts == full_prompts
        flat = [p for step in cut_prompts for p in step]
        assert len(flat) == 32 and len(set(flat)) == 32
    else:
        # Uninformative groups are dropped, so the trained prompts are a subset of those drawn; after the
        # resume they must still come in the sampler's order from the checkpointed position on, and
        # before it they are the uninterrupted run's (nothing differs until the kill).
        assert cut_prompts[:3] == full_prompts[:3]
        order = PromptSampler(rows(), seed=3)
        order.load_state_dict(first.saved[3]["sampler"])
        drawn = iter(order.sample_indices(resumed.sampler.consumed - first.saved[3]["sampler"]["consumed"]))
        assert all(any(p == d for d in drawn) for step in cut_prompts[3:] for p in step)  # an ordered subsequence


def test_resumed_draws_continue_from_the_checkpointed_position(tmp_path):
    """Exactly: the prompts the resumed producer draws are the sampler order from the saved position on."""
    cfg = make_config("async", 2, 4, dynamic_sampling=False)
    first = components(cfg, tmp_path / "a", delay_s=0.01)
    first.logger = KilledAfter(2)
    with pytest.raises(Killed):
        run(first)
    saved = first.saved[2]
    order = PromptSampler(rows(), seed=3)
    order.load_state_dict(saved["sampler"])
    expected = order.sample_indices(8)
    resumed = run(components(cfg, tmp_path / "a", resume=saved))
    assert [p for r in read_batches(tmp_path / "a")[2:] for p in r["prompts"]] == expected
    assert resumed.trainer.batches[0][0] == 2


def test_no_positive_resampling_retires_solved_prompts_and_saves_them(tmp_path):
    c = run(components(make_config("async", 1, 6, no_positive_resampling=0.75), tmp_path))
    retired = set(c.saved[6]["sampler"]["retired"])
    assert retired and retired == c.sampler.retired
    resumed_sampler = PromptSampler(rows(), seed=3)
    resumed_sampler.load_state_dict(c.saved[6]["sampler"])
    assert not retired & set(resumed_sampler.sample_indices(3 * NUM_PROMPTS))


def test_a_prompt_is_retired_exactly_when_its_group_passes_the_threshold():
    from cispo.driver.loop import Group, retire_solved_prompts
    from rewards import RewardResult

    def group(index, correct):
        verdicts = [RewardResult(score=float(x), correct=x, extracted="1", reason="correct" if x else "wrong_answer")
                    for x in correct]
        return Group([], [float(x) for x in correct], verdicts, prompt_index=index)

    cfg = make_config("sync", 0, 1, no_positive_resampling=0.75)
    c = SimpleNamespace(cfg=cfg, sampler=PromptSampler(rows(), seed=0))
    retire_solved_prompts(c, [group(1, [True] * 3 + [False]), group(2, [True, True, False, False]), group(3, [True] * 4)])
    assert c.sampler.retired == {1, 3}


# ------------------------------------------------------------------------------ pure pieces

def test_producer_waits_for_the_staleness_bound_and_reraises_errors():
    versions = PolicyVersions(0)
    started: list[tuple[int, int]] = []

    def collect(step):
        started.append((step, versions.queued))
        if step == 4:
            raise ValueError("engine died")
        return [step], {}

    producer = RolloutProducer(collect, dict, versions, first=1, last=5, max_staleness=1).start()
    for step in (1, 2, 3):
        assert producer.next_batch(step, timeout_s=5).groups == [step]
        time.sleep(0.05)
        versions.advance()
    with pytest.raises(ValueError, match="engine died"):  # the original error, for fault tolerance to classify
        producer.next_batch(4, timeout_s=5)
    assert all(v >= s - 2 for s, v in started)
    producer.close()


def test_split_by_staleness_and_its_metrics():
    keep, drop = split_by_staleness([5, 3, 1, 4], trainer_version=5, max_staleness=2)
    assert keep == [0, 1, 3] and drop == [2]
    with pytest.raises(ValueError, match="version 6 > trainer version 5"):
        split_by_staleness([6], 5, 2)
    m = staleness_metrics([0, 2, 1, 0], dropped=1, queued_batches=2, max_staleness=2)
    assert m["async/staleness_mean"] == 0.75 and m["async/staleness_max"] == 2.0
    assert m["async/staleness_frac/0"] == 0.5 and m["async/staleness_frac/1"] == 0.25
    assert m["async/dropped_stale"] == 1.0 and m["async/queued_batches"] == 2.0


def test_batch_log_resume_moves_later_lines_aside(tmp_path):
    log = BatchLog(tmp_path, None)
    for step in (1, 2, 3):
        log.write(step, [SimpleNamespace(prompt_index=step, policy_version=step - 1)], [0])
    BatchLog(tmp_path, 2)
    assert [r["step"] for r in read_batches(tmp_path)] == [1, 2]
    assert '"step": 3' in (tmp_path / "batches.discarded.jsonl").read_text()


def test_async_config_errors():
    from cispo.config.schema import ConfigError

    with pytest.raises(ConfigError, match="algorithm.old_log_probs=rollout"):
        load_config({"rollout": {"mode": "async"}, "algorithm": {"max_staleness": 2, "old_log_probs": "recompute"}})
    with pytest.raises(ConfigError, match="weight_sync=object_store"):
        load_config({"rollout": {"mode": "async", "group": {"weight_sync": "collective"}},
                     "algorithm": {"old_log_probs": "rollout"}})
    with pytest.raises(ConfigError, match="max_staleness=-1"):
        load_config({"algorithm": {"max_staleness": -1}})
    load_config({"rollout": {"mode": "async"}, "algorithm": {"max_staleness": 0},
                 "eval": {"sets": []}})  # k = 0 may recompute: on-policy at the start of each step


class SigtermWhileLogging(KilledAfter):
    """SIGTERM lands while step `step` is being logged: after the loop decided not to checkpoint it."""

    def act(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigterm_after_the_checkpoint_decision_still_ends_on_a_checkpoint(tmp_path, mode):
    cfg = make_config(mode, 1, 6)
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, save_every=0))
    c = components(cfg, tmp_path)
    c.logger = SigtermWhileLogging(2)
    run(c)
    last = max(c.logger.records)
    assert last == 3  # step 2 was not checkpointed, so the loop runs one more step and stops there
    assert sorted(c.saved) == [last]
