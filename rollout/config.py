"""Dataclass configs of the rollout engine, its sampling and the Ray group (mirrored in Hydra YAML).

Every default lives here; `validate()`, run on construction, turns a bad value into a ValueError naming
the field (the style of every schema of the project).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

DTYPES = ("float32", "bfloat16", "float16", "auto")
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
PROMPT_OVERFLOW = ("error", "truncate_left")
_CPU_IDS = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*(\|\d+(-\d+)?(,\d+(-\d+)?)*)*")


@dataclass
class EngineConfig:
    """Settings of one vLLM engine. Defaults run on a 2-core CPU machine with the tiny model.

    `logprobs_mode="raw_logprobs"` makes vLLM return log-probs of the model's own distribution
    (log_softmax of the logits before temperature, top-k/top-p and penalties): the quantity the
    trainer recomputes. `processed_logprobs` is allowed only for diagnostics.
    """

    # What a run *is* (a resumed run may not change these; cispo's docs/checkpoints.md): how a prompt and
    # its log-probs are treated. Placement, threads and memory may change.
    IDENTITY_KEYS = frozenset({"max_model_len", "prompt_overflow", "logprobs_mode"})

    model: str = "tiny"
    dtype: str = "float32"
    # Seed of vLLM's own generator (requests without SamplingConfig.seed).
    seed: int = 0
    # Weights seed of the built-in random models ("tiny", "tiny-tied"); ignored otherwise.
    model_seed: int = 0
    max_model_len: int = 1024
    # Prompts longer than max_model_len - 1: "error" (ValueError before vLLM sees them) or
    # "truncate_left" (keep the last tokens; the result records how many were dropped).
    prompt_overflow: str = "error"
    max_num_seqs: int = 256
    # Chunked prefill off: with it, vLLM 0.32's CPU path crashes on seeded requests whose prefill is
    # split across steps ("CPU Generator does not use offset"). Whole prefills need a token budget
    # of at least max_model_len; the engine uses max(max_num_batched_tokens, max_model_len).
    enable_chunked_prefill: bool = False
    max_num_batched_tokens: int = 8192
    enforce_eager: bool = True
    enable_prefix_caching: bool = True
    logprobs_mode: str = "raw_logprobs"
    # CPU backend: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE) and OpenMP binding
    # (VLLM_CPU_OMP_THREADS_BIND: "auto", "nobind", core ids such as "0-1", or "all": every core
    # this process may use; "auto" reserves one core for a scheduler process, i.e. 1 of 2 here).
    kv_cache_space_gib: int = 1
    omp_threads_bind: str = "auto"
    # Torch intra-op threads of the engine process (an in-process engine decodes on these; vLLM's
    # binding above only reaches its worker processes). 0: one per core with omp_threads_bind="all",
    # else unchanged (in a Ray actor: its CPU count).
    num_threads: int = 0
    # False runs the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): needed to
    # pass tensors to weight updates without copies, and the only mode tested on CPU.
    multiprocessing: bool = False
    # GPU only.
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    weight_update_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.model:
            raise ValueError("EngineConfig.model must be a built-in model name or a folder path")
        if self.dtype not in DTYPES:
            raise ValueError(f"EngineConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.model_seed < 0:
            raise ValueError(f"EngineConfig.model_seed must be >= 0, got {self.model_seed}")
        if self.max_model_len < 2:
            raise ValueError(f"EngineConfig.max_model_len must be >= 2, got {self.max_model_len}")
        if self.prompt_overflow not in PROMPT_OVERFLOW:
            raise ValueError(
                f"EngineConfig.prompt_overflow must be one of {PROMPT_OVERFLOW}, got {self.prompt_overflow!r}"
            )
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"EngineConfig.logprobs_mode must be one of {LOGPROBS_MODES}, got {self.logprobs_mode!r}"
            )
        if self.max_num_seqs < 1:
            raise ValueError(f"EngineConfig.max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.kv_cache_space_gib < 1:
            raise ValueError(f"EngineConfig.kv_cache_space_gib must be >= 1, got {self.kv_cache_space_gib}")
        if self.num_threads < 0:
            raise ValueError(f"EngineConfig.num_threads must be >= 0, got {self.num_threads}")
        if self.omp_threads_bind not in ("auto", "nobind", "all") and not _CPU_IDS.fullmatch(self.omp_threads_bind):
            raise ValueError(
                "EngineConfig.omp_threads_bind must be 'auto', 'nobind', 'all' or core ids like '0-3' or "
                f"'0,2|1,3' (one list per rank), got {self.omp_threads_bind!r}"
            )
        if self.tensor_parallel_size < 1:
            raise ValueError(
                f"EngineConfig.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"EngineConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if not self.weight_update_timeout_s > 0:
            raise ValueError(
                f"EngineConfig.weight_update_timeout_s must be > 0, got {self.weight_update_timeout_s}"
            )


@dataclass
class SamplingConfig:
    """Per-call sampling settings.

    `seed`: when set, prompt k of a call (k counted across the whole group) gets vLLM seed
    `seed + k * n`, and its samples `seed + k * n + j`: results do not depend on batching or on
    how a group splits prompts. None draws from the engine's generator (not reproducible per call).
    Repetition early stop (MiniMax-M1): stop a response once `repetition_window` consecutive
    tokens each had probability > `repetition_prob`; 0 turns it off.
    """

    # What a run *is* (a resumed run may not change these): the behaviour policy's sampling.
    IDENTITY_KEYS = frozenset({"temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "stop_token_ids",
                               "repetition_window", "repetition_prob"})

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    repetition_window: int = 0
    repetition_prob: float = 0.99
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"SamplingConfig.temperature must be finite and >= 0, got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("SamplingConfig.n must be 1 with greedy decoding (temperature 0)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"SamplingConfig.min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingConfig.max_tokens must be >= 1, got {self.max_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"SamplingConfig.stop must be a list of non-empty strings, got {self.stop!r}")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError(
                f"SamplingConfig.stop_token_ids must be non-negative ints, got {self.stop_token_ids!r}"
            )
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"SamplingConfig.seed must be None or an int >= 0, got {self.seed!r}")
        if self.repetition_window < 0:
            raise ValueError(
                f"SamplingConfig.repetition_window must be >= 0 (0 = off), got {self.repetition_window}"
            )
        if not 0.0 < self.repetition_prob < 1.0:
            raise ValueError(
                f"SamplingConfig.repetition_prob must be in (0, 1), got {self.repetition_prob}"
            )


WEIGHT_SYNC = ("object_store", "collective")
CHANNEL_BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class GroupConfig:
    """A group of rollout actors on Ray; each actor holds one engine."""

    num_actors: int = 1
    # Fractional CPUs let several actors share a small local cluster (ray.init(num_cpus=2)).
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    # Restarts allowed within one generate call before it gives up.
    max_restarts_per_call: int = 2
    # Seconds to wait for one actor's share of a generate call; None waits forever.
    generate_timeout_s: float | None = None
    # Custom Ray resources each actor needs (e.g. {"rollout_node": 1} to pin engines to the nodes
    # started with `ray start --resources='{"rollout_node": 4}'`).
    resources: dict[str, float] = field(default_factory=dict)
    weight_sync: str = "object_store"
    """How the trainer's weights reach the engines after each update. ``object_store``: trainer rank 0
    gathers the full state dict, puts it in Ray's object store once, every engine reads it (one
    machine, tests). ``collective``: a process group joins trainer rank 0 and every engine worker
    (each tensor-parallel rank); parameters are gathered one module at a time (ZeRO-3) and broadcast
    in buckets of ``weight_bucket_mb``, loaded bucket by bucket, so no process holds a second full
    copy of the model (the NCCL broadcast design of OpenRLHF and slime). docs/rollout.md, "Weight sync"."""
    weight_bucket_mb: float = 256.0
    """Bucket size of the collective channel in MiB: about its peak extra memory per process (a
    tensor larger than a bucket travels alone). Larger buckets mean fewer, longer broadcasts."""
    weight_channel_backend: str = "auto"
    """Backend of the collective channel: ``auto`` = nccl when each engine has whole GPUs
    (``num_gpus_per_actor >= 1``), else gloo (CPU, or an engine sharing a GPU with a trainer rank,
    which NCCL refuses). gloo on GPUs stages each bucket through CPU memory."""
    weight_channel_timeout_s: float = 300.0
    """Seconds for the collective channel to form, and for each of its collectives: a member that is
    gone or stuck raises an error after this long instead of hanging the run."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.weight_sync not in WEIGHT_SYNC:
            raise ValueError(f"GroupConfig.weight_sync must be one of {WEIGHT_SYNC}, got {self.weight_sync!r}")
        if self.weight_channel_backend not in CHANNEL_BACKENDS:
            raise ValueError(f"GroupConfig.weight_channel_backend must be one of {CHANNEL_BACKENDS}, "
                             f"got {self.weight_channel_backend!r}")
        if not self.weight_bucket_mb > 0:
            raise ValueError(f"GroupConfig.weight_bucket_mb must be > 0, got {self.weight_bucket_mb}")
        if not self.weight_channel_timeout_s > 0:
            raise ValueError(
                f"GroupConfig.weight_channel_timeout_s must be > 0, got {self.weight_channel_timeout_s}")
        if self.num_actors < 1:
            raise ValueError(f"GroupConfig.num_actors must be >= 1, got {self.num_actors}")
        if self.num_cpus_per_actor < 0:
            raise ValueError(f"GroupConfig.num_cpus_per_actor must be >= 0, got {self.num_cpus_per_actor}")
        if self.num_gpus_per_actor < 0:
            raise ValueError(f"GroupConfig.num_gpus_per_actor must be >= 0, got {self.num_gpus_per_actor}")
        if self.max_restarts_per_call < 0:
            raise ValueError(
                f"GroupConfig.max_restarts_per_call must be >= 0, got {self.max_restarts_per_call}"
            )
        if self.generate_timeout_s is not None and not self.generate_timeout_s > 0:
            raise ValueError(
                f"GroupConfig.generate_timeout_s must be None or > 0, got {self.generate_timeout_s}"
            )
        bad = {k: v for k, v in self.resources.items() if not isinstance(k, str) or not v >= 0}
        if bad:
            raise ValueError(f"GroupConfig.resources must map names to amounts >= 0, got {bad}")
