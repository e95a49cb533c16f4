"""Configuration of the policy trainer (DeepSpeed workers).

Every default lives here and is mirrored in ``configs/trainer/*.yaml``. ``validate()`` runs on
construction, before any model is loaded, so a bad value costs milliseconds, not a model load; each error names the key
as ``trainer.<field>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cispo.algorithms import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from cispo.algorithms.options import parse_options
from cispo.algorithms.policy_losses import LOSS_OPTIONS
from cispo.config.schema import Schema

PRECISIONS = ("fp32", "bf16")
ADAM_IMPLS = ("loop", "foreach", "fused")
LR_SCHEDULES = ("constant", "cosine")
ZERO_STAGES = (0, 1, 2, 3)


@dataclass
class TrainerConfig(Schema):
    """One policy update = ``ppo_epochs`` passes over the rollout batch, each split into
    ``batch_size / mini_batch_size`` mini-batches (one optimizer step each), each split into
    micro-batches of at most ``micro_batch_max_tokens`` padded tokens per rank."""

    # Engine
    zero_stage: int = 2
    # fp32 by default: CPUs without bf16 matmul units (AVX2-only, e.g. the 2-core dev machines)
    # run bf16 GEMMs 3-60x slower than fp32. Use bf16 on GPUs and AVX512-BF16/AMX CPUs.
    precision: str = "fp32"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    world_size: int = 1  # data-parallel ranks (Ray actors, one DeepSpeed process each)
    seed: int = 0  # derived from the run's seed
    # Torch intra-op threads per rank; 0 = the machine's cores divided by world_size.
    torch_threads: int = 0
    # glibc malloc of the rank process: keep freed memory for reuse (no mmap/munmap per large tensor,
    # no trimming) instead of returning it to the kernel and page-faulting it back in at the next
    # allocation. Measured on the 2-core CPU: -17% update time, a third of the update's CPU time was
    # the kernel's (benchmarks/results/update_profile.md). Numerically a no-op; the process keeps its
    # peak heap. No effect where the C library is not glibc.
    keep_freed_memory: bool = True
    # Ray resources of one rank (TrainerGroup); fractions let two ranks share a small machine.
    num_cpus_per_rank: float = 1.0
    num_gpus_per_rank: float = 0.0  # GPUs per rank (1.0 on GPU machines)
    # Custom Ray resources per rank (e.g. {"trainer_node": 1} to pin ranks to the nodes started with
    # `ray start --resources='{"trainer_node": 8}'`).
    resources_per_rank: dict[str, float] = field(default_factory=dict)
    # Seconds to wait for all ranks to load the model and join the process group.
    setup_timeout_s: float = 600.0

    # Optimizer: AdamW with MiniMax-M1's betas and eps (their gradients were 1e-18..1e-5).
    lr: float = 1e-6
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    adam_beta1: float = 0.9  # MiniMax-M1
    adam_beta2: float = 0.95  # MiniMax-M1
    adam_eps: float = 1e-15  # MiniMax-M1: its gradients were 1e-18..1e-5, so the usual 1e-8 swamped them
    # torch AdamW kernel: "fused" (one vectorised kernel per parameter), "foreach" (multi-tensor ops)
    # or "loop" (one op per tensor; torch's CPU default and this trainer's before 2026-12-02).
    # foreach is bit-identical to loop; fused rounds differently: parameters differ from loop in the
    # last bits (set "loop" to reproduce earlier runs bit for bit). benchmarks/results/update_profile.md
    # measures each.
    adam_impl: str = "fused"
    # Global-norm clipping; 0 disables it.
    grad_clip: float = 1.0
    # Linear warm-up from 0 over warmup_steps optimizer steps, then constant or cosine decay to
    # min_lr_ratio * lr at total_steps (cosine only).
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant (DAPO, M1) or cosine
    total_steps: int = 1000  # optimizer steps the LR schedule spans (derived from the run)
    min_lr_ratio: float = 0.0  # cosine decays to min_lr_ratio * lr at the last optimizer step

    # Batch geometry, in responses (rows). batch_size is the rollout batch one update() receives
    # across all ranks; it must be split evenly into mini-batches and each mini-batch across ranks.
    batch_size: int = 64
    mini_batch_size: int = 64  # responses per optimizer step; batch / mini_batch steps per rollout batch
    ppo_epochs: int = 1  # passes over the rollout batch (each pass: all its mini-batches)
    # Padded tokens (rows x longest row; with sequence_packing, real tokens) per micro-batch on one
    # rank: bounds activation memory.
    micro_batch_max_tokens: int = 4096
    # Sequence packing: each micro-batch runs as one row of its rows' real tokens (position ids
    # restart per row, attention restricted to each row by a per-row causal SDPA call), so no
    # forward/backward work goes to padding, which is ~19% of the positions with uneven 128-token
    # responses (actor/perf/padding_frac; benchmarks/results/packing.md). micro_batch_max_tokens then
    # bounds the real tokens of a micro-batch. Full-attention decoder models (Llama, Qwen2) only.
    sequence_packing: bool = False
    # Response tokens per LM-head chunk: bounds the [chunk, vocab] logits held at once.
    logprob_chunk_size: int = 1024
    # LM head (hidden @ W^T and the softmax) in fp32 even in bf16: MiniMax-M1's fix for the
    # trainer/rollout probability mismatch.
    lm_head_fp32: bool = True
    # Per-token entropy of the policy as a metric (costs one extra pass over each logits chunk).
    log_entropy: bool = True
    # Peak FLOP/s of ONE rank's device (e.g. the machine's measured fp32 GEMM ceiling on the rank's
    # threads: cispo.trainer.flops.measure_fp32_gemm_flops). Set: the update reports actor/perf/mfu =
    # model FLOP/s (PaLM's count, docs/trainer.md) / (peak_flops x world_size). null: no MFU, only
    # actor/perf/flops_per_s.
    peak_flops: float | None = None

    # Policy loss (cispo.algorithms.compute_policy_loss). eps_low / eps_high are offsets from 1:
    # the IS-weight / ratio clip range is [1 - eps_low, 1 + eps_high]. CISPO default: weight in
    # [0, 5] (ScaleRL / SkyRL; MiniMax-M1 publishes no value).
    loss: str = "cispo"
    eps_low: float = 1.0  # clip range [1 - eps_low, 1 + eps_high], an offset from 1 for every loss
    eps_high: float = 4.0  # CISPO default: IS weight in [0, 5] (SkyRL; ScaleRL caps 4-8 equivalent)
    # None = the loss's own default aggregation (cispo/dapo: token-mean, grpo: seq-mean-token-mean).
    agg: str | None = None
    # Constant divisor of seq-mean-token-sum-norm (Dr. GRPO); None = the padded width of the batch.
    loss_token_budget: float | None = None
    # KL to a frozen reference model (GRPO); the reference is loaded only when kl_coef > 0.
    kl_coef: float = 0.0
    kl_estimator: str = "k3"  # k1, k2 or k3 (DeepSeekMath: k3), see docs/algorithms.md
    # None: k3 unclamped, as in DeepSeekMath, TRL and slime. A number c clamps k3 to [-c, c] (and the
    # log-ratio inside it to +-20), verl's choice (c = 10): where it binds, the most-diverged tokens lose
    # their KL gradient.
    kl_clamp: float | None = None
    # Truncated importance sampling cap on pi_old / pi_rollout (used when rollout log-probs are given).
    tis_cap: float | None = None
    # Loss-specific options (cispo: unified_mask, mask_eps_low, mask_eps_high; grpo/dapo: dual_clip).
    loss_options: dict[str, Any] = field(default_factory=dict)

    # The loss with its options, the update's geometry and numerics, the optimizer and its LR schedule;
    # placement, memory and speed settings (zero_stage, world_size, micro-batches, packing, ...) may change.
    IDENTITY_KEYS = frozenset({
        "loss", "eps_low", "eps_high", "agg", "loss_token_budget", "kl_coef", "kl_estimator", "kl_clamp",
        "tis_cap", "loss_options", "mini_batch_size", "ppo_epochs", "precision", "lm_head_fp32", "grad_clip",
        "lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "warmup_steps", "lr_schedule",
        "min_lr_ratio",
    })
    # Restored from the checkpoint's optimizer and LR-scheduler state: a new value would be ignored.
    RESTORED_ON_RESUME = frozenset({
        "lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "warmup_steps", "lr_schedule", "min_lr_ratio",
    })

    def resolved_agg(self) -> str:
        from cispo.algorithms import DEFAULT_AGGREGATION

        return DEFAULT_AGGREGATION[self.loss] if self.agg is None else self.agg

    def validate(self) -> None:
        """Raises ValueError naming ``trainer.<key>``."""

        def bad(key: str, value: Any, expected: str) -> ValueError:
            return ValueError(f"trainer.{key}={value!r}: expected {expected}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

        if self.zero_stage not in ZERO_STAGES or not is_int(self.zero_stage):
            raise bad("zero_stage", self.zero_stage, "one of 0, 1, 2, 3")
        if self.precision not in PRECISIONS:
            raise bad("precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        if self.adam_impl not in ADAM_IMPLS:
            raise bad("adam_impl", self.adam_impl, f"one of {', '.join(ADAM_IMPLS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", self.lr_schedule, f"one of {', '.join(LR_SCHEDULES)}")
        for key in ("world_size", "batch_size", "mini_batch_size", "ppo_epochs", "micro_batch_max_tokens",
                    "logprob_chunk_size", "total_steps"):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise bad(key, value, "an integer >= 1")
        for key in ("warmup_steps", "torch_threads", "seed"):
            value = getattr(self, key)
            if not is_int(value) or value < 0:
                raise bad(key, value, "an integer >= 0")
        if not is_num(self.lr) or self.lr <= 0:
            raise bad("lr", self.lr, "a number > 0")
        for key in ("num_cpus_per_rank", "num_gpus_per_rank"):
            value = getattr(self, key)
            if not is_num(value) or value < 0:
                raise bad(key, value, "a number >= 0")
        if not isinstance(self.resources_per_rank, dict) or not all(
                isinstance(k, str) and is_num(v) and v >= 0 for k, v in self.resources_per_rank.items()):
            raise bad("resources_per_rank", self.resources_per_rank, "a mapping of resource name to a number >= 0")
        if not is_num(self.setup_timeout_s) or self.setup_timeout_s <= 0:
            raise bad("setup_timeout_s", self.setup_timeout_s, "a number > 0")
        for key in ("weight_decay", "grad_clip", "eps_low", "eps_high", "kl_coef"):
            value = getattr(self, key)
            if not is_num(value) or value < 0:
                raise bad(key, value, "a number >= 0")
        for key in ("adam_beta1", "adam_beta2"):
            value = getattr(self, key)
            if not is_num(value) or not 0 <= value < 1:
                raise bad(key, value, "a number in [0, 1)")
        if not is_num(self.adam_eps) or self.adam_eps <= 0:
            raise bad("adam_eps", self.adam_eps, "a number > 0")
        if not is_num(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        if self.lr_schedule == "cosine" and self.warmup_steps >= self.total_steps:
            raise bad("warmup_steps", self.warmup_steps, f"< trainer.total_steps={self.total_steps} for cosine")

        if not isinstance(self.keep_freed_memory, bool):
            raise bad("keep_freed_memory", self.keep_freed_memory, "true or false")
        if not isinstance(self.sequence_packing, bool):
            raise bad("sequence_packing", self.sequence_packing, "true or false")
        if self.mini_batch_size > self.batch_size:
            raise bad("mini_batch_size", self.mini_batch_size,
                      f"<= trainer.batch_size={self.batch_size} (a mini-batch cannot exceed the batch)")
        if self.batch_size % self.mini_batch_size:
            raise bad("mini_batch_size", self.mini_batch_size,
                      f"a divisor of trainer.batch_size={self.batch_size}")
        if self.batch_size % self.world_size:
            raise bad("batch_size", self.batch_size,
                      f"divisible by trainer.world_size={self.world_size} (rows are split evenly across ranks)")
        if self.mini_batch_size % self.world_size:
            raise bad("mini_batch_size", self.mini_batch_size,
                      f"divisible by trainer.world_size={self.world_size} (each mini-batch is split across ranks)")

        if self.loss not in POLICY_LOSSES:
            raise bad("loss", self.loss, f"one of {', '.join(sorted(POLICY_LOSSES))}")
        if self.agg is not None and self.agg not in AGGREGATIONS:
            raise bad("agg", self.agg, f"null or one of {', '.join(AGGREGATIONS)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise bad("kl_estimator", self.kl_estimator, f"one of {', '.join(KL_ESTIMATORS)}")
        if self.tis_cap is not None and (not is_num(self.tis_cap) or self.tis_cap <= 0):
            raise bad("tis_cap", self.tis_cap, "null or a number > 0")
        if self.loss_token_budget is not None and (not is_num(self.loss_token_budget) or self.loss_token_budget <= 0):
            raise bad("loss_token_budget", self.loss_token_budget, "null or a number > 0")
        if self.peak_flops is not None and (not is_num(self.peak_flops) or self.peak_flops <= 0):
            raise bad("peak_flops", self.peak_flops, "null or a number > 0")
        if self.kl_clamp is not None and (not is_num(self.kl_clamp) or self.kl_clamp <= 0):
            raise bad("kl_clamp", self.kl_clamp, "null or a number > 0")
        parse_options(LOSS_OPTIONS[self.loss], self.loss_options, "trainer.loss_options")
