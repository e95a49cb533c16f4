"""Schemas of the config sections the driver owns (the others live beside their packages).

Defaults here mirror ``configs/``; the YAML is the one place users read and change them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cispo.algorithms import ADVANTAGE_ESTIMATORS
from cispo.algorithms.advantages import ADVANTAGE_OPTIONS
from cispo.algorithms.options import parse_options
from cispo.config.schema import Schema


ANSWER_PLACEHOLDER = "{answer}"


@dataclass
class WarmStartConfig(Schema):
    steps: int = 0
    """Optimizer steps of supervised training; 0 = no warm start."""
    batch_size: int = 32
    """Rows per supervised step."""
    lr: float = 3e-3
    """AdamW learning rate of the warm start (the tiny model needs a large one; SmolLM2 uses 5e-5)."""
    response: str = "\\boxed{{answer}}"
    """The target response; ``{answer}`` is replaced by the row's ground truth."""
    seed: int = 0
    """Order of the warm-start rows; the result is cached by model, data and these settings."""

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"model.warmstart.steps={self.steps}: expected >= 0")
        if self.batch_size < 1:
            raise ValueError(f"model.warmstart.batch_size={self.batch_size}: expected >= 1")
        if not self.lr > 0:
            raise ValueError(f"model.warmstart.lr={self.lr}: expected > 0")
        if self.response.count(ANSWER_PLACEHOLDER) != 1:
            raise ValueError(f"model.warmstart.response={self.response!r}: must contain {ANSWER_PLACEHOLDER} once")


@dataclass
class ModelConfig(Schema):
    """``path``: ``tiny``, ``tiny-tied``, ``smollm2-135m`` (built locally, no network) or an HF folder."""

    path: str = "tiny"
    """``tiny``, ``tiny-tied``, ``smollm2-135m`` (built locally from pip packages, no network) or the path of
    a Hugging Face model folder; chosen by the ``model`` group."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights of the trainer and the engines. fp32 on CPUs without bf16 matmul units (bf16 is slower there)."""
    seed: int = 0
    """Initial weights of the built-in random models (``tiny``); ignored for real models."""
    cache_dir: str | None = None
    """Where built and warm-started models are cached; null = ``~/.cache/cispo/models``."""
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Optional supervised warm start on the training task before RL (see cispo/driver/warmstart.py)."""

    IDENTITY_KEYS = frozenset({"path", "dtype", "seed", "warmstart"})  # the starting policy; not its cache


@dataclass
class AlgorithmConfig(Schema):
    """What distinguishes CISPO / DAPO / GRPO outside the loss (the loss knobs live in ``trainer``)."""

    IDENTITY_KEYS = frozenset({
        "name", "advantage", "advantage_eps", "advantage_options", "dynamic_sampling", "max_gen_rounds",
        "oversample", "refill_sizing", "refill_z", "keep_rate_memory", "max_round_factor", "old_log_probs",
        "max_staleness", "no_positive_resampling",
    })  # every field: the algorithm is what a run is

    name: str = "cispo"
    """The run's label in names and reports (``cispo``, ``dapo``, ``grpo``, ``gspo``): it must equal
    ``trainer.loss``, so a run is always labelled by the loss it trains with."""
    advantage: str = "grpo"
    """Advantage estimator: grpo (group mean/std), dr_grpo (mean only), rloo."""
    advantage_eps: float = 1e-6
    """Added to the std in the advantage's denominator (verl's 1e-6; TRL uses 1e-4)."""
    advantage_options: dict[str, Any] = field(default_factory=dict)
    """Options of the estimator, checked at load (``grpo``: std_unbiased, batch_std, norm_by_std; see
    docs/algorithms.md)."""
    dynamic_sampling: bool = True
    """DAPO's dynamic sampling (also used by M1): drop groups with zero reward variance, refill."""
    max_gen_rounds: int = 3
    """Cap on generation rounds per step; past it, train on what was collected (never crash)."""
    oversample: float = 1.5
    """Prompts drawn per refill round, as a multiple of the groups still missing (``refill_sizing=oversample``
    only)."""
    refill_sizing: Literal["keep_rate", "oversample"] = "keep_rate"
    """How many prompts each generation round draws under dynamic sampling. ``keep_rate``: from the share
    of groups with reward variance observed so far (this step and, decayed, past steps), enough that one
    round is expected to fill the batch (``refill_z``), so one large round replaces several small ones
    (on CPU a batch of 48 prompts costs far less than two of 24). ``oversample``: round 0 draws
    ``prompts_per_step`` and each refill ``oversample`` x the groups missing (DAPO's rule of thumb)."""
    refill_z: float = 1.0
    """Margin of a keep-rate-sized round: n is the fewest prompts whose informative-group count reaches
    the groups missing at ``refill_z`` binomial standard deviations below its mean (1.0: ~84% of rounds
    suffice; 0: the expected count only)."""
    keep_rate_memory: float = 0.5
    """Weight of past steps in the keep-rate estimate (its counts are multiplied by this after each
    step; 0 = this step's rounds only). Saved with the checkpoint, so a resumed run draws the same."""
    max_round_factor: float = 4.0
    """Cap on the prompts one keep-rate-sized round draws, as a multiple of ``prompts_per_step`` (bounds
    the round's memory and time when almost no group is informative)."""
    old_log_probs: Literal["recompute", "rollout"] = "recompute"
    """The behaviour policy's log-probs in the IS weight r = pi / pi_old: ``recompute`` (a trainer
    forward pass over the batch before the update, exact) or ``rollout`` (vLLM's own log-probs of
    the sampled tokens: saves that pass; right only when engine and trainer agree, e.g. fp32 on CPU,
    max |diff| ~1e-5 here; in bf16 they differ by ~1e-2: recompute, as verl and OpenRLHF do)."""
    max_staleness: int = 1
    """``rollout.mode=async`` only: a group generated by policy version v is trained at trainer version t
    only if t - v <= max_staleness (older ones are dropped and counted); the producer never starts a
    step's batch more than this many versions ahead. 0 reproduces the synchronous loop exactly;
    ScaleRL's PipelineRL recipe allows 8, verl's one-step-off 1."""
    no_positive_resampling: float | None = None
    """ScaleRL's no-positive-resampling (Khatri et al. 2025, sec. 3.2): a prompt whose group reaches this
    pass rate (share of correct responses, e.g. 0.9) leaves the pool for the rest of the run (the set is
    saved with checkpoints). null keeps every prompt."""

    def validate(self) -> None:
        if self.max_staleness < 0:
            raise ValueError(f"algorithm.max_staleness={self.max_staleness}: expected an integer >= 0")
        if self.no_positive_resampling is not None and not 0.0 < self.no_positive_resampling <= 1.0:
            raise ValueError(f"algorithm.no_positive_resampling={self.no_positive_resampling}: expected a pass rate "
                             "in (0, 1] or null")
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"algorithm.advantage={self.advantage!r}: expected one of {sorted(ADVANTAGE_ESTIMATORS)}")
        parse_options(ADVANTAGE_OPTIONS[self.advantage], self.advantage_options, "algorithm.advantage_options")
        if self.max_gen_rounds < 1:
            raise ValueError(f"algorithm.max_gen_rounds={self.max_gen_rounds}: expected >= 1")
        if self.oversample < 1.0:
            raise ValueError(f"algorithm.oversample={self.oversample}: expected >= 1.0")
        if self.refill_sizing not in ("keep_rate", "oversample"):
            raise ValueError(f"algorithm.refill_sizing={self.refill_sizing!r}: expected 'keep_rate' or 'oversample'")
        if not self.refill_z >= 0.0:
            raise ValueError(f"algorithm.refill_z={self.refill_z}: expected >= 0")
        if not 0.0 <= self.keep_rate_memory <= 1.0:
            raise ValueError(f"algorithm.keep_rate_memory={self.keep_rate_memory}: expected a number in [0, 1]")
        if not self.max_round_factor >= 1.0:
            raise ValueError(f"algorithm.max_round_factor={self.max_round_factor}: expected >= 1.0")


@dataclass
class EvalConfig(Schema):
    every: int = 4
    """Evaluate every N steps (0 = only at the end); always at the end, and before the first step with at_start."""
    k: int = 4
    """Samples per problem (avg@k, pass@k, maj@k). M1 uses 32 on AIME."""
    temperature: float = 1.0
    """Sampling temperature of evaluation (M1 and DAPO evaluate AIME at 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling of evaluation (M1: 0.95 on AIME, DAPO: 0.7)."""
    max_tokens: int = 128
    """Response budget per sample; a truncated response is scored as it is (usually wrong)."""
    sets: list[str] | None = None
    """Names of eval sets defined in ``data.eval``; null: every set the data preset defines (``data=arithmetic``:
    ``heldout``, the training task's held-out split; ``data=gsm8k``: ``gsm8k``). The run's config.yaml
    records the resolved list."""
    at_start: bool = True
    """Evaluate the starting policy as step 0 (skipped when a run resumes)."""

    # What an eval number means (which sets, k, sampling); how often it is taken may change.
    IDENTITY_KEYS = frozenset({"sets", "k", "temperature", "top_p", "max_tokens"})


@dataclass
class LoggerConfig(Schema):
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """``offline`` writes ``<run_dir>/wandb/offline-run-*`` (upload later with ``wandb sync``);
    ``online`` needs network access and a login; ``disabled`` never imports wandb."""
    project: str = "cispo"
    """wandb project name."""
    console: bool = True
    """One line per step and a live progress display (on a terminal)."""
    log_level: Literal["warning", "info", "debug"] = "warning"
    """Console threshold for log records, ours and vLLM's / Ray's / DeepSpeed's. At ``warning`` the
    workers' output goes to ``<run_dir>/logs/`` and INFO lines to ``<run_dir>/train.log`` only."""


@dataclass
class RayConfig(Schema):
    address: str | None = None
    """None: start a local Ray (right-sized for this machine); ``auto`` or ``host:port`` joins a cluster."""
    num_cpus: int | None = None
    """For a local Ray only; None = all cores."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = "PACK"
    """Each worker group (rollout, trainer) is reserved as one placement group with this strategy;
    None schedules actors one by one."""
    placement_timeout_s: float = 300.0
    """Seconds to wait for the cluster to grant each placement group before failing with what was asked."""


@dataclass
class CheckpointConfig(Schema):
    save_every: int = 10
    """Checkpoint every N steps (0 = only at the end); also at the last step and on SIGTERM / SIGINT."""
    keep_last: int = 2
    """Complete checkpoints kept; older ones are removed (renamed aside first, so a kill leaves none half-deleted)."""
    resume: str = "auto"
    """``auto`` (latest complete checkpoint of the run folder), ``none``, or a checkpoint path."""
    allow_changes: list[str] = field(default_factory=list)
    """Identity keys (dotted, e.g. ``[data.train, trainer.eps_high]``) a resumed run may change deliberately;
    without them a changed identity key refuses the resume. Each change is recorded in
    ``<run_dir>/config_history.jsonl`` and shown by ``cispo.compare`` (docs/checkpoints.md)."""

    def validate(self) -> None:
        for key in self.allow_changes:
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"checkpoint.allow_changes={self.allow_changes!r}: expected dotted config keys")
