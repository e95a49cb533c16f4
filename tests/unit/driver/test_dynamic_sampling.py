"""Dynamic sampling's round sizes: the keep-rate rule, worked by hand, and ``collect_groups`` driving a
stand-in generator whose informative-group counts per round are scripted in advance."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import cispo.driver.loop as loop
from cispo.driver.dynamic_sampling import GroupCollector, KeepRateEstimate, prompts_for_keep_rate, round_size
from cispo.config.sections import AlgorithmConfig
from cispo.tracking import PhaseTimer

SECONDS_PER_PROMPT = 0.5  # the stand-in generator's cost (exact in binary)


# ---- the sizing rule, by hand ----------------------------------------------------------------------
def test_keep_rate_one_draws_exactly_the_missing_groups():
    assert prompts_for_keep_rate(8, 1.0, z=1.0, cap=100) == 8


def test_binomial_margin_worked_by_hand():
    # p = 0.5, missing 10, z = 1: s = 0.5, x = (0.5 + sqrt(0.25 + 20)) / 1 = 5, n = 25;
    # check: 25 * 0.5 - sqrt(25 * 0.25) = 12.5 - 2.5 = 10.
    assert prompts_for_keep_rate(10, 0.5, z=1.0, cap=100) == 25
    # p = 0.5, missing 4: x = 0.5 + sqrt(8.25) = 3.372, x^2 = 11.37 -> 12 (11 gives 5.5 - 1.66 = 3.84 < 4).
    assert prompts_for_keep_rate(4, 0.5, z=1.0, cap=100) == 12
    # z = 0 is the expected count only: missing / p = 4 / (1/3) = 12 (float noise must not make it 13).
    assert prompts_for_keep_rate(4, 1 / 3, z=0.0, cap=100) == 12


def test_cap_and_floor():
    assert prompts_for_keep_rate(10, 0.5, z=1.0, cap=20) == 20  # 25 capped
    assert prompts_for_keep_rate(4, 0.0, z=1.0, cap=32) == 32  # nothing informative yet: the cap
    assert prompts_for_keep_rate(12, 0.1, z=1.0, cap=8) == 12  # never fewer than the groups missing
    assert prompts_for_keep_rate(0, 0.5, z=1.0, cap=8) == 0


def test_oversample_rule_is_the_old_one():
    est = KeepRateEstimate(memory=0.5)
    kwargs = dict(sizing="oversample", estimate=est, oversample=1.5, z=1.0, cap=1000)
    assert round_size(0, 16, 16, **kwargs) == 16
    assert round_size(1, 11, 16, **kwargs) == 17  # ceil(11 * 1.5)
    with pytest.raises(ValueError, match="refill sizing 'bigger'"):
        round_size(0, 16, 16, **{**kwargs, "sizing": "bigger"})


def test_estimate_pools_rounds_and_decays_per_step():
    est = KeepRateEstimate(memory=0.5)
    assert est.rate == 1.0
    est.observe(8, 4)
    est.observe(12, 6)
    assert est.rate == 0.5
    est.end_step()
    assert (est.seen, est.informative) == (10.0, 5.0)
    est.observe(20, 0)  # a bad step pulls it down: 5 / 30
    assert est.rate == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="3 informative groups out of 2"):
        est.observe(2, 3)


def test_collector_counts_informative_groups_beyond_the_target():
    c: GroupCollector[int] = GroupCollector(target_groups=2, filter_zero_variance=True)
    c.add([1, 2, 3, 4], [[0, 1], [1, 1], [0, 1], [1, 0]])
    assert (len(c.kept), c.informative, c.dropped_zero_variance) == (2, 3, 1)


@pytest.mark.parametrize(("key", "value"), [("refill_sizing", "more"), ("refill_z", -1.0),
                                            ("keep_rate_memory", 1.5), ("max_round_factor", 0.5)])
def test_bad_refill_config_names_the_field(key, value):
    with pytest.raises(ValueError, match=f"algorithm.{key}"):
        AlgorithmConfig(**{key: value})


# ---- collect_groups with a stand-in generator -------------------------------------------------------
class ScriptedGenerator:
    """Stands in for ``loop.generate_groups``: round r's first ``informative[r]`` groups have reward
    variance (a float: that fraction of the prompts drawn, rounded down), the rest not; each prompt
    costs SECONDS_PER_PROMPT of the fake clock."""

    def __init__(self, informative: list[int | float], now: list[float]) -> None:
        self.informative = list(informative)
        self.now = now
        self.drawn: list[int] = []

    def __call__(self, c, step, round_index, num_prompts, timer):  # noqa: ANN001 - loop's signature
        self.drawn.append(num_prompts)
        k = self.informative.pop(0)
        k = int(k * num_prompts) if isinstance(k, float) else k
        assert k <= num_prompts, "script asks for more informative groups than prompts drawn"
        with timer.phase("generate"):
            self.now[0] += SECONDS_PER_PROMPT * num_prompts
        return [loop.Group([], [0.0, 1.0] if i < k else [1.0, 1.0], []) for i in range(num_prompts)]


def components(**algorithm) -> SimpleNamespace:
    alg = AlgorithmConfig(**{"max_gen_rounds": 3, "refill_z": 1.0, "keep_rate_memory": 0.5,
                             "max_round_factor": 4.0, **algorithm})
    cfg = SimpleNamespace(prompts_per_step=8, algorithm=alg)
    return SimpleNamespace(cfg=cfg, state=SimpleNamespace(keep_rate=KeepRateEstimate(alg.keep_rate_memory)))


def run_step(c, informative: list[int | float], monkeypatch, step: int = 1) -> tuple[list[int], dict[str, float]]:
    now = [0.0]
    gen = ScriptedGenerator(informative, now)
    monkeypatch.setattr(loop, "generate_groups", gen)
    timer = PhaseTimer(clock=lambda: now[0])
    timer.start_step()
    groups, metrics = loop.collect_groups(c, step, timer)
    assert len(groups) == metrics["dynamic_sampling/groups_kept"]
    return gen.drawn, metrics


def test_keep_rate_rounds_worked_by_hand(monkeypatch):
    c = components()
    # Step 1: no estimate -> 8 prompts, 4 informative (p = 0.5, 4 missing) -> 12 prompts (see above),
    # 6 informative: full, 2 surplus dropped. Counts 20 / 10, decayed to 10 / 5.
    drawn, m = run_step(c, [4, 6], monkeypatch)
    assert drawn == [8, 12]
    assert (m["dynamic_sampling/rounds"], m["dynamic_sampling/groups_seen"], m["dynamic_sampling/groups_kept"]) == \
        (2, 20, 8)
    assert m["dynamic_sampling/keep_rate_estimate"] == 1.0
    assert m["perf/generate_s_per_kept_group"] == SECONDS_PER_PROMPT * 20 / 8
    assert (c.state.keep_rate.seen, c.state.keep_rate.informative) == (10.0, 5.0)
    # Step 2: p = 0.5, 8 missing: x = 0.5 + sqrt(16.25) = 4.531, x^2 = 20.53 -> 21 prompts in ONE round
    # (20 would give 10 - 2.24 = 7.76 < 8).
    drawn, m = run_step(c, [9], monkeypatch, step=2)
    assert drawn == [21]
    assert m["dynamic_sampling/rounds"] == 1 and m["dynamic_sampling/shortfall"] == 0
    assert m["dynamic_sampling/keep_rate_estimate"] == 0.5
    assert m["perf/generate_s_per_kept_group"] == SECONDS_PER_PROMPT * 21 / 8


def test_same_keep_rates_with_the_old_rule_take_more_rounds(monkeypatch):
    c = components(refill_sizing="oversample", oversample=1.5)
    # 8 prompts, 4 informative -> ceil(4 * 1.5) = 6 prompts, 3 informative -> ceil(1 * 1.5) = 2, 1.
    drawn, m = run_step(c, [4, 3, 1], monkeypatch)
    assert drawn == [8, 6, 2]
    assert m["dynamic_sampling/rounds"] == 3 and m["dynamic_sampling/shortfall"] == 0


def test_nothing_informative_draws_the_cap_then_trains_on_nothing(monkeypatch):
    c = components(max_gen_rounds=2)
    drawn, m = run_step(c, [0, 0], monkeypatch)
    assert drawn == [8, 32]  # p = 0 after round 0: the cap, 4 x 8
    assert m["dynamic_sampling/shortfall"] == 8
    assert "perf/generate_s_per_kept_group" not in m
    assert c.state.keep_rate.rate == 0.0


def test_without_filtering_every_round_is_the_batch(monkeypatch):
    c = components(dynamic_sampling=False)
    for step in (1, 2):
        drawn, m = run_step(c, [0], monkeypatch, step=step)  # all zero-variance, but nothing is dropped
        assert drawn == [8] and m["dynamic_sampling/groups_kept"] == 8
    assert c.state.keep_rate.rate == 1.0


def test_resumed_estimate_draws_the_same_rounds(monkeypatch):
    script = [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5], [0.75, 0.75, 0.75]]
    straight = components()
    sizes = [run_step(straight, s, monkeypatch, step=i + 1)[0] for i, s in enumerate(script)]
    first = components()
    for i, s in enumerate(script[:2]):
        run_step(first, s, monkeypatch, step=i + 1)
    saved = json.loads(json.dumps(first.state.keep_rate.state_dict()))  # what the checkpoint's JSON holds
    resumed = components()
    resumed.state.keep_rate.load_state_dict(saved)
    assert [run_step(resumed, s, monkeypatch, step=i + 3)[0] for i, s in enumerate(script[2:])] == sizes[2:]
    # Without the restored estimate the same steps would draw differently (round 0 = 8 prompts).
    fresh = components()
    assert [run_step(fresh, s, monkeypatch, step=i + 3)[0] for i, s in enumerate(script[2:])] != sizes[2:]

