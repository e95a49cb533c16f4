"""The policy worker: one data-parallel rank of the trainer, a plain class (the Ray actor wraps it).

One ``update(batch)`` = ``ppo_epochs`` passes over the rank's rows, each cut into mini-batches
(one optimizer step each: what makes CISPO differ from DAPO), each cut into micro-batches by a
token budget. The loss normaliser of a mini-batch is its GLOBAL count (tokens / sequences / prompt
groups) summed over micro-batches and ranks, so the update does not depend on how the mini-batch
was split. DeepSpeed averages gradients over ranks, so each rank back-propagates world_size x its
share; the sum over ranks is then exactly the gradient of the mini-batch loss.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from cispo.algorithms import aggregation_count, compute_policy_loss
from cispo.trainer import comm
from cispo.config.trainer import TrainerConfig
from cispo.trainer.batch import TrainBatch, group_units, plan_micro_batches, split_plan
from cispo.trainer.flops import ModelShape, training_flops
from cispo.trainer.logprobs import PolicyModel, use_fp32_head
from cispo.trainer.metrics import METRIC_PREFIX, DiagnosticsAccumulator, MismatchAccumulator, StalenessISAccumulator
from cispo.trainer.checkpoint import load_worker, save_worker, scheduler_state, training_state
from cispo.trainer.optim import build_optimizer, deepspeed_config
from cispo.trainer.weights import WeightSender, export_state_dict, iter_weights, weight_manifest

log = logging.getLogger(__name__)


@dataclass
class _StepResult:
    loss: float
    finite: bool
    grad_norm: float | None
    lr: float
    applied: bool
    entropy_sum: float
    entropy_tokens: float
    real_tokens: float = 0.0
    padded_tokens: float = 0.0


def _model_dir(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ValueError(f"model_path={str(path)!r} is not a Hugging Face model folder (no config.json)")
    return p


def _set_threads(cfg: TrainerConfig) -> int:
    """Torch intra-op threads (Ray exports OMP_NUM_THREADS = the actor's num_cpus; this overrides it)
    and, with ``keep_freed_memory``, glibc's allocator pinned to reusing freed memory."""
    threads = cfg.torch_threads or max(1, len(os.sched_getaffinity(0)) // cfg.world_size)
    torch.set_num_threads(threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    return threads


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap (no mmap, so no munmap and fresh page faults for
    each large activation or gradient) and never trim it. False where libc is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**30))


class PolicyWorker:
    """One rank. ``config.validate()`` runs first, so a bad config fails before any model loads."""

    def __init__(self, config: TrainerConfig, model_path: str | os.PathLike, *, rank: int = 0,
                 ref_model_path: str | os.PathLike | None = None):
        config.validate()
        if not isinstance(rank, int) or not 0 <= rank < config.world_size:
            raise ValueError(f"rank={rank!r}: expected 0 <= rank < trainer.world_size={config.world_size}")
        self.config = config
        self.rank = rank
        self.model_path = _model_dir(model_path)
        ref_path = _model_dir(ref_model_path) if ref_model_path is not None else self.model_path
        self.threads = _set_threads(config)
        comm.init_process_group(rank, config.world_size)
        self.device = comm.device()
        torch.manual_seed(config.seed)
        self.engine = self._build_engine(self.model_path, train=True)
        # The frozen reference costs a second model: only GRPO-style KL needs it.
        self.ref_engine = self._build_engine(ref_path, train=False) if config.kl_coef > 0 else None
        self.skipped_steps_total = 0
        self.flop_shape = ModelShape.of(self.hf_model)  # for actor/perf/flops_per_s and mfu
        self.sender = WeightSender()  # rank 0's end of the collective weight channel, once opened

    # ------------------------------------------------------------------ set-up
    def _build_engine(self, path: Path, *, train: bool):
        import deepspeed
        from transformers import AutoModelForCausalLM

        cfg = self.config
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        if train and cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lm_head_fp32:
            use_fp32_head(model)
        policy = PolicyModel(model, cfg.logprob_chunk_size,
                             sync_chunks=cfg.zero_stage == 3 and cfg.world_size > 1, packing=cfg.sequence_packing)
        if not train:
            policy.requires_grad_(False)
            engine, *_ = deepspeed.initialize(model=policy, config=deepspeed_config(cfg, train=False),
                                              dist_init_required=False)
            engine.eval()
            return engine
        optimizer, scheduler = build_optimizer(policy, cfg)
        engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, lr_scheduler=scheduler,
                                          config=deepspeed_config(cfg), dist_init_required=False)
        return engine

    @property
    def hf_model(self) -> torch.nn.Module:
        """The wrapped transformers model (parameters partitioned under ZeRO-3)."""
        return self.engine.module.model

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (skipped ones included, as DeepSpeed counts them)."""
        return int(self.engine.global_steps)

    # ------------------------------------------------------------ log-probs
    @torch.no_grad()
    def compute_log_probs(self, batch: TrainBatch) -> Tensor:
        """Per-token log-probs [B, T] (fp32, 0 off ``response_mask``) of this rank's rows."""
        return self._forward(self.engine, batch, with_entropy=False)[0]

    @torch.no_grad()
    def compute_log_probs_and_entropy(self, batch: TrainBatch) -> tuple[Tensor, Tensor]:
        log_probs, entropy = self._forward(self.engine, batch, with_entropy=True)
        return log_probs, entropy

    @torch.no_grad()
    def compute_ref_log_probs(self, batch: TrainBatch) -> Tensor:
        if self.ref_engine is None:
            raise ValueError("no reference model: it is loaded only when trainer.kl_coef > 0")
        return self._forward(self.ref_engine, batch, with_entropy=False)[0]

    def _plan(self, lengths: Tensor, units: list[list[int]]) -> list[list[int]]:
        """Micro-batches of at most ``micro_batch_max_tokens`` padded (or, packed, real) tokens."""
        return plan_micro_batches(lengths, units, self.config.micro_batch_max_tokens,
                                  packed=self.config.sequence_packing)

    def _forward(self, engine, batch: TrainBatch, *, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
        batch.validate()
        was_training = engine.training
        engine.eval()
        units = group_units(batch.group_ids, keep_groups=False)
        plan = self._plan(batch.lengths(), units)
        # ZeRO-3 all-gathers weights inside every forward: all ranks must run the same number.
        (target,) = comm.all_max(len(plan))
        log_probs = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        entropy = torch.zeros_like(log_probs) if with_entropy else None
        for rows in split_plan(plan, units, int(target)):
            micro = _to(batch.select(rows if rows is not None else [0]).trim(), self.device)
            lp, ent = engine(micro.input_ids, micro.attention_mask, micro.response_mask, with_entropy)
            if rows is None:
                continue
            index = torch.as_tensor(rows)
            width = lp.shape[1]
            log_probs[index, :width] = lp.float().cpu()
            if entropy is not None:
                entropy[index, :width] = ent.float().cpu()
        engine.train(was_training)
        return log_probs, entropy

    # --------------------------------------------------------------- update
    def update(self, batch: TrainBatch) -> dict[str, float]:
        """``ppo_epochs`` x mini-batches optimizer steps on this rank's rows (collective). Metric names are
        final (``actor/loss``, ``actor/dropped_token_frac``, ...): the loop logs them as they are."""
        cfg = self.config
        start = time.perf_counter()
        batch.validate()
        local_mini = cfg.mini_batch_size // cfg.world_size
        rows = len(batch)
        (most, fewest) = comm.all_max(rows, -rows)
        if most != -fewest:
            raise ValueError(f"ranks got different row counts ({int(-fewest)}..{int(most)}); the batch must be "
                             "split evenly across trainer.world_size ranks")
        if rows % local_mini:
            raise ValueError(f"a rank got {rows} rows; trainer.mini_batch_size={cfg.mini_batch_size} / "
                             f"trainer.world_size={cfg.world_size} = {local_mini} rows per rank must divide it")
        n_mini = rows // local_mini

        # Without given old log-probs: on-policy (one step) uses the current ones, else recompute.
        on_policy = batch.old_log_probs is None and cfg.ppo_epochs == 1 and n_mini == 1
        if batch.old_log_probs is None and not on_policy:
            batch = replace(batch, old_log_probs=self.compute_log_probs(batch))
        if cfg.kl_coef > 0 and batch.ref_log_probs is None:
            batch = replace(batch, ref_log_probs=self.compute_ref_log_probs(batch))
        mismatch = MismatchAccumulator()
        if batch.rollout_log_probs is not None and batch.old_log_probs is not None:
            mismatch.add(batch.old_log_probs, batch.rollout_log_probs, batch.response_mask)
        token_budget = float(cfg.loss_token_budget or batch.input_ids.shape[1])

        self.engine.train()
        diagnostics = DiagnosticsAccumulator()
        by_staleness = StalenessISAccumulator(cfg.eps_high)
        results: list[_StepResult] = []
        empty = 0
        for epoch in range(cfg.ppo_epochs):
            for m in range(n_mini):
                mini = batch.select(slice(m * local_mini, (m + 1) * local_mini))
                result = self._train_step(mini, token_budget, diagnostics,
                                          mismatch if on_policy and epoch == 0 else None,
                                          by_staleness if epoch == 0 else None)
                if result is None:
                    empty += 1
                else:
                    results.append(result)

        elapsed = time.perf_counter() - start
        model_flops = training_flops(self.flop_shape, batch.attention_mask.sum(dim=1).tolist(),
                                     int(batch.response_mask[:, 1:].sum())) * cfg.ppo_epochs
        tokens, entropy_sum, entropy_tokens, real, padded, model_flops = comm.all_sum(
            float(batch.attention_mask.sum()) * cfg.ppo_epochs,
            sum(r.entropy_sum for r in results), sum(r.entropy_tokens for r in results),
            sum(r.real_tokens for r in results), sum(r.padded_tokens for r in results), model_flops)
        applied = [r for r in results if r.applied]
        finite = [r for r in results if r.finite]
        skipped = len(results) - len(applied)
        self.skipped_steps_total += skipped
        norms = [r.grad_norm for r in applied if r.grad_norm is not None]
        metrics: dict[str, float] = {
            # Mean mini-batch loss over the steps whose loss was finite on every rank.
            "loss": sum(r.loss for r in finite) / len(finite) if finite else float("nan"),
            "grad_norm": sum(norms) / len(norms) if norms else float("nan"),
            "grad_norm_max": max(norms) if norms else float("nan"),
            "lr": results[-1].lr if results else float(self.engine.get_lr()[0]),
            "optimizer_steps": float(len(applied)),
            "skipped_steps": float(skipped),
            "skipped_steps_total": float(self.skipped_steps_total),
            "empty_mini_batches": float(empty),
            "global_step": float(self.global_step),
            "perf/update_seconds": elapsed,
            "perf/tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
            # Share of the forward/backward positions that are padding (what packing would save).
            "perf/padding_frac": 1.0 - real / padded if padded > 0 else 0.0,
            # Model FLOPs (cispo/trainer/flops.py) of all ranks per second of this update.
            "perf/flops_per_s": model_flops / elapsed if elapsed > 0 else 0.0,
        }
        if cfg.peak_flops is not None:
            metrics["perf/mfu"] = metrics["perf/flops_per_s"] / (cfg.peak_flops * cfg.world_size)
        if cfg.log_entropy and entropy_tokens > 0:
            metrics["entropy"] = entropy_sum / entropy_tokens
        metrics.update(diagnostics.result(prefix=""))
        metrics.update(mismatch.result())
        metrics.update(by_staleness.result())
        return {f"{METRIC_PREFIX}{key}": value for key, value in metrics.items()}

    def _train_step(self, mini: TrainBatch, token_budget: float, diagnostics: DiagnosticsAccumulator,
                    mismatch: MismatchAccumulator | None,
                    by_staleness: StalenessISAccumulator | None = None) -> _StepResult | None:
        """Forward/backward every micro-batch of one mini-batch, then one optimizer step."""
        cfg = self.config
        agg = cfg.resolved_agg()
        (normalizer,) = comm.all_sum(aggregation_count(mini.response_mask, agg, group_ids=mini.group_ids))
        if normalizer == 0:
            return None
        units = group_units(mini.group_ids, keep_groups=agg == "prompt-mean")
        plan = self._plan(mini.lengths(), units)
        (target,) = comm.all_max(len(plan))
        local_loss, nonfinite, entropy_sum, entropy_tokens = 0.0, False, 0.0, 0.0
        real_tokens, padded_tokens = 0.0, 0.0
        for rows in split_plan(plan, units, int(target)):
            micro = _to(mini.select(rows if rows is not None else [0]).trim(), self.device)
            log_probs, entropy = self.engine(micro.input_ids, micro.attention_mask, micro.response_mask,
                                             cfg.log_entropy)
            mask = micro.response_mask
            if rows is not None:
                real_tokens += float(micro.attention_mask.sum())
                # Positions the model ran on: packed micro-batches have no padding.
                padded_tokens += float(micro.attention_mask.sum() if cfg.sequence_packing
                                       else micro.attention_mask.numel())
            if rows is None:
                # A padding pass so every rank runs as many backward passes (ZeRO-2/3 reduce in them).
                loss = log_probs.sum() * 0.0
            elif not bool(torch.isfinite(log_probs[mask.bool()]).all()):
                nonfinite = True
                loss = log_probs.sum() * float("nan")  # NaN gradients: DeepSpeed / GuardedAdamW skip the step
            else:
                old = micro.old_log_probs if micro.old_log_probs is not None else log_probs.detach()
                if mismatch is not None and micro.rollout_log_probs is not None:
                    mismatch.add(log_probs.detach(), micro.rollout_log_probs, mask)
                if by_staleness is not None and micro.staleness is not None:
                    by_staleness.add(log_probs, old, mask, micro.staleness)
                loss, metrics = compute_policy_loss(
                    cfg.loss, log_probs, old, micro.advantages, mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                    agg=cfg.agg, ref_log_probs=micro.ref_log_probs, kl_coef=cfg.kl_coef,
                    kl_estimator=cfg.kl_estimator, kl_clamp=cfg.kl_clamp,
                    rollout_log_probs=micro.rollout_log_probs if cfg.tis_cap is not None else None,
                    tis_cap=cfg.tis_cap, normalizer=normalizer, token_budget=token_budget,
                    group_ids=micro.group_ids, **cfg.loss_options)
                if not bool(torch.isfinite(loss)):
                    nonfinite = True
                    loss = loss * float("nan")
                else:
                    local_loss += float(loss.detach())
                    diagnostics.add(metrics)
                if entropy is not None:
                    entropy_sum += float((entropy * mask).sum())
                    entropy_tokens += float(mask.sum())
            self.engine.backward(loss * cfg.world_size)
        lr = float(self.engine.get_lr()[0])
        self.engine.step()
        applied = bool(self.engine.was_step_applied())
        (any_nonfinite,) = comm.all_max(float(nonfinite))
        if any_nonfinite and applied:
            raise RuntimeError("a non-finite loss reached an applied optimizer step; DeepSpeed did not skip it")
        if not applied:
            log.warning("rank %d: optimizer step %d skipped (non-finite %s); weights unchanged", self.rank,
                        self.global_step, "loss" if any_nonfinite else "gradient")
        (loss_sum,) = comm.all_sum(local_loss)
        norm = self.engine.get_global_grad_norm()
        return _StepResult(loss=loss_sum, finite=not any_nonfinite, grad_norm=None if norm is None else float(norm),
                           lr=lr, applied=applied, entropy_sum=entropy_sum, entropy_tokens=entropy_tokens,
                           real_tokens=real_tokens, padded_tokens=padded_tokens)

    # -------------------------------------------------------------- weights (cispo.trainer.weights)
    def export_weights(self) -> dict[str, Tensor]:
        """The full state dict in HF names, on CPU, on rank 0 (collective under ZeRO-3)."""
        return export_state_dict(self.hf_model, zero3=self.config.zero_stage == 3, rank=self.rank)

    def weight_manifest(self) -> list[tuple[str, tuple[int, ...], str]]:
        return weight_manifest(self.hf_model)

    def iter_weights(self):  # noqa: ANN201 - Iterator[Tensor]
        return iter_weights(self.hf_model, zero3=self.config.zero_stage == 3)

    def open_weight_channel(self, spec) -> None:  # noqa: ANN001 - rollout.weight_channel.ChannelSpec
        """Rank 0 hosts and joins the collective weight channel as its sender (blocks until it forms)."""
        if self.rank != 0:
            raise RuntimeError("only trainer rank 0 joins the weight channel")
        self.sender.open(spec, self.device)

    def send_weights(self) -> dict[str, float]:
        """One streamed sync (collective over the trainer ranks under ZeRO-3)."""
        return self.sender.send(self.hf_model, zero3=self.config.zero_stage == 3, rank=self.rank)

    # -------------------------------------------------------------- checkpoints (cispo.trainer.checkpoint)
    def training_state(self) -> dict[str, dict[str, Tensor]]:
        """fp32 master weights and Adam moments per parameter name (collective under ZeRO-3)."""
        return training_state(self)

    def scheduler_state(self) -> dict[str, float]:
        return scheduler_state(self)

    def save(self, directory: str | os.PathLike) -> None:
        save_worker(self, directory)

    def load(self, directory: str | os.PathLike) -> None:
        load_worker(self, directory)


def _to(batch: TrainBatch, device: torch.device) -> TrainBatch:
    if device.type == "cpu":
        return batch
    return replace(batch, **{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in vars(batch).items()})
