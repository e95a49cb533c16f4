"""`RolloutEngine`: a plain class around `vllm.LLM` that returns what RL needs per response.

For every response: prompt ids, response ids, float32 log-probs of the raw policy distribution,
finish reason (stop / length / repetition), and the prompt's group id. Weights are replaced in
place (`update_weights`) with validation, a timeout, and a prefix-cache reset.
"""

from __future__ import annotations

import concurrent.futures
import gc
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rollout.config import EngineConfig, SamplingConfig
from rollout.logs import quiet_harmless_reload_warning
from rollout.models import prepare_model
from rollout.repetition import EXTRA_ARG, repetition_cut
from rollout.types import RolloutResult
from rollout.weight_format import (
    ExpectedWeights,
    WeightsLike,
    WeightSyncError,
    WeightSyncTimeoutError,
    from_safetensors_bytes,
    to_safetensors_bytes,
)

Message = Mapping[str, str]
CHANNEL_CLOSE_TIMEOUT_S = 10.0
Prompt = str | Sequence[int] | Sequence[Message]


class PromptTooLongError(ValueError):
    """A prompt does not fit in max_model_len (with room for one generated token)."""


def omp_bind_list(bind: str) -> str:
    """vLLM's "auto" keeps one core per engine for a scheduler process, which an in-process engine
    does not have: on 2 cores it decodes on ONE thread. "all" binds every core this process may
    use (the trainer is idle while the engine generates: the phases take turns)."""
    if bind != "all":
        return bind
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def engine_threads(config: EngineConfig) -> int:
    """Torch threads of the engine process; 0 = leave them as they are.

    An in-process engine ignores VLLM_CPU_OMP_THREADS_BIND (only vLLM's worker processes apply it)
    and runs on this process's torch threads, which Ray sets to the actor's CPU count (1). With
    ``omp_threads_bind="all"`` it gets one thread per core this process may use instead."""
    if config.num_threads > 0:
        return config.num_threads
    if config.omp_threads_bind == "all":
        return len(os.sched_getaffinity(0))
    return 0


def apply_engine_env(config: EngineConfig) -> None:
    """Set the vLLM / OpenMP environment of this process; must run before the engine starts."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if config.multiprocessing else "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_space_gib)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = omp_bind_list(config.omp_threads_bind)
    threads = engine_threads(config)
    if threads > 0:
        # Before the engine starts: vLLM's CPU worker disables torch.set_num_threads once it runs.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


class RolloutEngine:
    """One vLLM engine. Not thread-safe: one call at a time (Ray actors serialise calls)."""

    # vLLM keeps its distributed state in globals: two in-process engines in one process corrupt
    # each other (closing or collecting one tears the other's state down). One at a time.
    _live_in_process = 0

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.config.validate()
        # Resolves built-in names (building them once) and validates local folders.
        self.model_dir = prepare_model(
            self.config.model,
            dtype=self.config.dtype if self.config.dtype != "auto" else "float32",
            seed=self.config.model_seed,
        )
        self.expected = ExpectedWeights.from_model_dir(self.model_dir)
        if not self.config.multiprocessing and RolloutEngine._live_in_process:
            raise RuntimeError(
                "an in-process vLLM engine is already running in this process: close() it first, "
                "or set EngineConfig.multiprocessing=True"
            )
        apply_engine_env(self.config)
        from vllm import LLM

        quiet_harmless_reload_warning()

        from rollout.repetition_processor import RepetitionStopProcessor

        self.llm = LLM(
            model=str(self.model_dir),
            dtype=self.config.dtype,
            seed=self.config.seed,
            max_model_len=self.config.max_model_len,
            max_num_seqs=self.config.max_num_seqs,
            enable_chunked_prefill=self.config.enable_chunked_prefill,
            max_num_batched_tokens=max(self.config.max_num_batched_tokens, self.config.max_model_len),
            enforce_eager=self.config.enforce_eager,
            enable_prefix_caching=self.config.enable_prefix_caching,
            logprobs_mode=self.config.logprobs_mode,
            tensor_parallel_size=self.config.tensor_parallel_size,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            worker_extension_cls="rollout.weight_sync.WeightSyncExtension",
            logits_processors=[RepetitionStopProcessor],
            # Ignore the model's generation_config.json: sampling comes only from SamplingConfig.
            generation_config="vllm",
        )
        if not self.config.multiprocessing:
            RolloutEngine._live_in_process += 1
        self.tokenizer = self.llm.get_tokenizer()
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._pending_update: concurrent.futures.Future | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-sync")
        # Why generation is refused until the next complete update (a streamed update cut part-way).
        self._stale: str | None = None
        self.weight_version = 0
        self._channel_open = False  # joined a collective weight channel: left on close()

    # ----------------------------------------------------------------- prompts
    def tokenize_prompts(self, prompts: Sequence[Prompt]) -> tuple[list[list[int]], list[int]]:
        """Token ids per prompt (chat messages get the chat template and a generation prompt),
        and how many tokens were dropped from the left of each (0 unless truncation is on)."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: nothing to generate")
        limit = self.config.max_model_len - 1
        ids_all: list[list[int]] = []
        dropped: list[int] = []
        for i, p in enumerate(prompts):
            ids = self._tokenize_one(i, p)
            cut = 0
            if len(ids) > limit:
                if self.config.prompt_overflow == "error":
                    raise PromptTooLongError(
                        f"prompts[{i}] has {len(ids)} tokens; at most max_model_len - 1 = {limit} fit "
                        f"(set EngineConfig.prompt_overflow='truncate_left' to keep the last {limit})"
                    )
                cut = len(ids) - limit
                ids = ids[cut:]
            ids_all.append(ids)
            dropped.append(cut)
        return ids_all, dropped

    def _tokenize_one(self, i: int, p: Any) -> list[int]:
        if isinstance(p, np.ndarray):
            p = p.tolist()
        if isinstance(p, str):
            if not p:
                raise ValueError(f"prompts[{i}] is an empty string")
            return list(self.tokenizer(p).input_ids)
        if not isinstance(p, Sequence) or len(p) == 0:
            raise ValueError(
                f"prompts[{i}] must be a non-empty str, list of token ids or list of chat messages, got {p!r:.80}"
            )
        if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in p):
            bad = [int(t) for t in p if not 0 <= int(t) < self.vocab_size]
            if bad:
                raise ValueError(f"prompts[{i}] has token ids outside [0, {self.vocab_size}): {bad[:5]}")
            return [int(t) for t in p]
        if all(isinstance(m, Mapping) and "role" in m and "content" in m for m in p):
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in p], tokenize=False, add_generation_prompt=True
            )
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)
        raise ValueError(
            f"prompts[{i}] must be a str, a list of int token ids or a list of {{'role', 'content'}} "
            f"messages; got {p!r:.80}"
        )

    # ---------------------------------------------------------------- generate
    def vllm_sampling_params(self, s: SamplingConfig, seed: int | None):
        """The vLLM SamplingParams of one prompt (raw log-prob of each sampled token requested)."""
        from vllm import SamplingParams

        extra = {EXTRA_ARG: [s.repetition_window, s.repetition_prob]} if s.repetition_window > 0 else None
        return SamplingParams(
            n=s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            min_p=s.min_p,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            stop_token_ids=list(s.stop_token_ids) or None,
            seed=seed,
            logprobs=0,
            flat_logprobs=True,
            skip_special_tokens=s.skip_special_tokens,
            extra_args=extra,
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig | None = None,
        *,
        group_ids: Sequence[int] | None = None,
        prompt_offset: int = 0,
    ) -> list[RolloutResult]:
        """Sample `sampling.n` responses per prompt; results are prompt-major, sample-minor.

        `group_ids` default to `prompt_offset + i`. `prompt_offset` is the index of the first
        prompt in a larger batch (a group's share), which keeps per-prompt seeds global.
        """
        s = sampling or SamplingConfig()
        s.validate()
        self._check_idle()
        if self._stale is not None:
            raise WeightSyncError(f"this engine's weights are a mix of two versions: {self._stale}; "
                                  "a complete update_weights/receive_weights must come first")
        ids_all, dropped = self.tokenize_prompts(prompts)
        if group_ids is None:
            group_ids = [prompt_offset + i for i in range(len(ids_all))]
        elif len(group_ids) != len(ids_all):
            raise ValueError(f"group_ids has {len(group_ids)} entries for {len(ids_all)} prompts")
        if prompt_offset < 0:
            raise ValueError(f"prompt_offset must be >= 0, got {prompt_offset}")
        from vllm.inputs import TokensPrompt

        params = [
            self.vllm_sampling_params(s, None if s.seed is None else s.seed + (prompt_offset + i) * s.n)
            for i in range(len(ids_all))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in ids_all], params, use_tqdm=False
        )
        results: list[RolloutResult] = []
        for i, out in enumerate(outputs):
            for comp in sorted(out.outputs, key=lambda c: c.index):
                results.append(self._to_result(ids_all[i], comp, group_ids[i], dropped[i], s))
        return results

    def _to_result(self, prompt_ids: list[int], comp, group_id: int, dropped: int, s: SamplingConfig) -> RolloutResult:  # noqa: ANN001
        tokens = list(comp.token_ids)
        logprobs = _sampled_logprobs(comp.logprobs, tokens)
        finish = "length" if comp.finish_reason == "length" else "stop"
        if comp.finish_reason not in ("length", "stop"):
            raise RuntimeError(f"vLLM ended a request with finish_reason {comp.finish_reason!r}")
        text = comp.text
        cut = repetition_cut(logprobs, s.repetition_window, s.repetition_prob)
        if cut is not None and (cut < len(tokens) or finish == "length"):
            tokens, logprobs = tokens[:cut], logprobs[:cut]
            finish = "repetition"
            text = self.tokenizer.decode(tokens, skip_special_tokens=s.skip_special_tokens)
        return RolloutResult(
            prompt_ids=list(prompt_ids),
            response_ids=tokens,
            logprobs=logprobs,
            finish_reason=finish,
            group_id=int(group_id),
            text=text,
            sample_index=int(comp.index),
            prompt_truncated_tokens=dropped,
            stop_reason=comp.stop_reason if finish == "stop" else None,
        )

    # ----------------------------------------------------------- weight update
    def update_weights(
        self, weights: WeightsLike | bytes, *, timeout_s: float | None = None
    ) -> dict[str, float]:
        """Replace every weight in place (HF names; a tied lm_head is filled from the embedding).

        `weights`: name -> tensor mapping, (name, tensor) pairs, or safetensors bytes (from
        another process). Raises ValueError before touching the engine if a name or shape is
        wrong or a tensor is missing; WeightSyncTimeoutError after `timeout_s`
        (default EngineConfig.weight_update_timeout_s). Resets the prefix cache afterwards.
        """
        timeout = self.config.weight_update_timeout_s if timeout_s is None else timeout_s
        if not timeout > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        self._check_idle()
        t0 = time.perf_counter()
        if isinstance(weights, (bytes, bytearray)):
            weights = from_safetensors_bytes(bytes(weights))
        named = self.expected.check(weights)
        payload: Any = {k: v.detach() for k, v in named.items()}
        if self.config.multiprocessing:
            payload = to_safetensors_bytes(payload)
        t_checked = time.perf_counter()
        fut = self._executor.submit(self._load, payload, timeout)
        try:
            n = fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError as e:
            self._pending_update = fut
            raise WeightSyncTimeoutError(
                f"weight update did not finish within {timeout:.1f} s; the engine is unusable until it "
                "does (generate/update_weights will raise)"
            ) from e
        except Exception as e:  # noqa: BLE001 - surfaced with context
            raise WeightSyncError(f"weight update failed inside vLLM: {type(e).__name__}: {e}") from e
        self._stale = None
        self.weight_version += 1
        t1 = time.perf_counter()
        return {
            "num_tensors": float(n),
            "num_bytes": float(sum(v.numel() * v.element_size() for v in named.values())),
            "validate_s": t_checked - t0,
            "load_s": t1 - t_checked,
            "total_s": t1 - t0,
        }

    # ------------------------------------------------- collective weight channel
    @property
    def channel_ranks(self) -> int:
        """Members this engine adds to a weight channel: one per worker (tensor-parallel rank)."""
        return self.config.tensor_parallel_size

    def open_weight_channel(self, spec: Any, rank_offset: int) -> list[int]:
        """Join the trainer's weight channel (`rollout.weight_channel.ChannelSpec`); this engine's
        workers take ranks rank_offset .. rank_offset + channel_ranks - 1. Blocks until the whole
        group has formed or spec.timeout_s passes."""
        self._check_idle()
        ranks = self.llm.collective_rpc("cispo_channel_open", timeout=spec.timeout_s * 1.5 + 5.0,
                                        args=(spec, rank_offset))
        self._channel_open = True
        return [int(r) for r in ranks]

    def receive_weights(self, *, timeout_s: float | None = None) -> dict[str, float]:
        """Receive one streamed update from the weight channel (the sender runs at the same time);
        names and shapes are validated before any tensor moves; the prefix cache is reset after
        the last bucket. Same errors as `update_weights`."""
        timeout = self.config.weight_update_timeout_s if timeout_s is None else timeout_s
        if not timeout > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout}")
        self._check_idle()
        t0 = time.perf_counter()
        fut = self._executor.submit(self._receive, timeout)
        try:
            stats = fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError as e:
            self._pending_update = fut
            raise WeightSyncTimeoutError(
                f"streamed weight update did not finish within {timeout:.1f} s; the engine is unusable "
                "until it does (generate/update_weights will raise)"
            ) from e
        except ValueError:
            raise  # a refused manifest: names the tensor, nothing was loaded
        except WeightSyncError as e:
            self._stale = f"a streamed weight update failed part-way ({e})"
            raise
        except Exception as e:  # noqa: BLE001 - surfaced with context
            self._stale = f"a streamed weight update failed part-way ({type(e).__name__}: {e})"
            raise WeightSyncError(f"streamed weight update failed inside vLLM: {type(e).__name__}: {e}") from e
        self._stale = None
        self.weight_version += 1
        return stats | {"total_s": time.perf_counter() - t0}

    def _receive(self, timeout: float) -> dict[str, float]:
        stats = self.llm.collective_rpc("cispo_channel_receive", timeout=timeout, args=(self.expected,))
        if not self.llm.reset_prefix_cache():
            raise WeightSyncError("vLLM refused to reset the prefix cache after the weight update")
        return stats[0]

    def _load(self, payload: Any, timeout: float) -> int:
        counts = self.llm.collective_rpc("cispo_load_weights", timeout=timeout, args=(payload,))
        if not self.llm.reset_prefix_cache():
            raise WeightSyncError("vLLM refused to reset the prefix cache after the weight update")
        return int(counts[0])

    def _check_idle(self) -> None:
        fut = self._pending_update
        if fut is None:
            return
        if not fut.done():
            raise WeightSyncError("a timed-out weight update is still running in this engine")
        self._pending_update = None
        if fut.exception() is not None:
            raise WeightSyncError(f"a timed-out weight update later failed: {fut.exception()}")
        self.weight_version += 1  # it completed late: the new weights are in

    def close(self) -> None:
        """Shut the engine down; afterwards a new one may start in this process."""
        self._executor.shutdown(wait=False)
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        if self._channel_open:  # leave the weight channel's process group before the workers go
            try:
                llm.collective_rpc("cispo_channel_close", timeout=CHANNEL_CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - best effort on the way out: the workers are shut down next
                pass
            self._channel_open = False
        if not self.config.multiprocessing:
            RolloutEngine._live_in_process = 0
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()  # run vLLM's finalizers now, not while a later engine is alive
        if not self.config.multiprocessing:
            # The in-process engine made this process's torch.distributed group: tear it down so a
            # later engine or a DeepSpeed worker in the same process starts from a clean state.
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()


def _sampled_logprobs(lp: Any, tokens: list[int]) -> np.ndarray:
    """Log-prob of each sampled token from vLLM's flat (or per-position dict) log-probs."""
    if lp is None:
        raise WeightSyncError("vLLM returned no logprobs although logprobs=0 was requested")
    if hasattr(lp, "start_indices"):  # FlatLogprobs: with logprobs=0, one entry per position
        if len(lp.start_indices) != len(tokens):
            raise WeightSyncError(f"vLLM returned {len(lp.start_indices)} logprob positions for {len(tokens)} tokens")
        vals = np.empty(len(tokens), dtype=np.float32)
        for t, (a, b) in enumerate(zip(lp.start_indices, lp.end_indices)):
            for k in range(a, b):
                if lp.token_ids[k] == tokens[t]:
                    vals[t] = lp.logprobs[k]
                    break
            else:
                raise WeightSyncError(f"vLLM logprobs lack the sampled token at position {t}")
        return vals
    return np.asarray([pos[tok].logprob for pos, tok in zip(lp, tokens)], dtype=np.float32)
