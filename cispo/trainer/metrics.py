"""Accumulating metrics over micro-batches, mini-batches and ranks.

Loss diagnostics from ``compute_policy_loss`` are per micro-batch; they combine token-weighted
(``n_tokens``), except maxima (``*_max``) and the loss itself (already globally normalised: summed).
"""

from __future__ import annotations

import math
from collections import defaultdict

from torch import Tensor

from cispo.trainer import comm

METRIC_PREFIX = "actor/"
"""Every metric of an update is named ``actor/<name>`` by the worker itself (``actor/loss``,
``actor/dropped_token_frac``, ``actor/mismatch/...``, ``actor/perf/...``): the names in metrics.jsonl."""


class DiagnosticsAccumulator:
    """Token-weighted means of the loss diagnostics, merged across ranks in :meth:`result`."""

    def __init__(self) -> None:
        self.weighted: dict[str, float] = defaultdict(float)
        self.weight: dict[str, float] = defaultdict(float)
        self.maxima: dict[str, float] = {}

    def add(self, metrics: dict[str, float]) -> None:
        tokens = metrics.get("n_tokens", 0.0)
        for key, value in metrics.items():
            if key in ("loss", "n_tokens"):
                continue
            if key.endswith("_max"):
                self.maxima[key] = max(self.maxima.get(key, -math.inf), value)
            else:
                self.weighted[key] += value * tokens
                self.weight[key] += tokens

    def result(self, prefix: str) -> dict[str, float]:
        """Collective: every rank must call it."""
        merged = comm.all_gather_objects((dict(self.weighted), dict(self.weight), self.maxima))
        weighted: dict[str, float] = defaultdict(float)
        weight: dict[str, float] = defaultdict(float)
        maxima: dict[str, float] = {}
        for w_sum, w, mx in merged:
            for key, value in w_sum.items():
                weighted[key] += value
                weight[key] += w[key]
            for key, value in mx.items():
                maxima[key] = max(maxima.get(key, -math.inf), value)
        out = {f"{prefix}{k}": (weighted[k] / weight[k] if weight[k] > 0 else 0.0) for k in sorted(weighted)}
        out.update({f"{prefix}{k}": v for k, v in sorted(maxima.items())})
        return out


class MismatchAccumulator:
    """Trainer vs rollout (vLLM) log-probs of the same tokens: mean/max abs difference of log-probs
    and Pearson correlation of the probabilities (MiniMax-M1 reports ~0.9x without an fp32 head)."""

    FIELDS = ("n", "abs_sum", "p", "q", "pp", "qq", "pq")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self.FIELDS, 0.0)
        self.abs_max = 0.0

    def add(self, trainer: Tensor, rollout: Tensor, mask: Tensor) -> None:
        sel = mask.bool()
        a = trainer[sel].double()
        b = rollout[sel].to(a.device).double()
        if a.numel() == 0:
            return
        p, q = a.exp(), b.exp()
        diff = (a - b).abs()
        for key, value in (("n", a.numel()), ("abs_sum", diff.sum()), ("p", p.sum()), ("q", q.sum()),
                           ("pp", (p * p).sum()), ("qq", (q * q).sum()), ("pq", (p * q).sum())):
            self.sums[key] += float(value)
        self.abs_max = max(self.abs_max, float(diff.max()))

    def result(self) -> dict[str, float]:
        """Collective: every rank must call it (returns {} when no rollout log-probs were seen)."""
        totals = comm.all_sum(*(self.sums[k] for k in self.FIELDS))
        (abs_max,) = comm.all_max(self.abs_max)
        s = dict(zip(self.FIELDS, totals))
        n = s["n"]
        if n == 0:
            return {}
        cov = s["pq"] / n - (s["p"] / n) * (s["q"] / n)
        var_p = s["pp"] / n - (s["p"] / n) ** 2
        var_q = s["qq"] / n - (s["q"] / n) ** 2
        corr = cov / math.sqrt(var_p * var_q) if var_p > 0 and var_q > 0 else float("nan")
        return {"mismatch/logprob_abs_diff_mean": s["abs_sum"] / n, "mismatch/logprob_abs_diff_max": abs_max,
                "mismatch/prob_corr": corr}


class StalenessISAccumulator:
    """The importance weight r = pi_theta / pi_old the loss sees on each token at the first pass
    over its row (epoch 0), grouped by the row's staleness (asynchronous rollout). With pi_old the
    engine's log-probs, r measures how far the trainer moved since the policy that sampled the row;
    ``above_cap_frac`` is the share of tokens above 1 + eps_high (where CISPO caps the weight and
    DAPO/PPO drop the gradient)."""

    def __init__(self, eps_high: float) -> None:
        self.eps_high = eps_high
        self.stats: dict[int, list[float]] = {}  # staleness -> [tokens, sum r, max r, tokens above the cap]

    def add(self, log_probs: Tensor, old_log_probs: Tensor, mask: Tensor, staleness: Tensor) -> None:
        ratio = (log_probs.detach().double() - old_log_probs.to(log_probs.device).double()).exp()
        sel = mask.bool()
        for value in staleness.unique().tolist():
            rows = (staleness.to(sel.device) == value).unsqueeze(1) & sel
            r = ratio[rows]
            if r.numel() == 0:
                continue
            acc = self.stats.setdefault(int(value), [0.0, 0.0, 0.0, 0.0])
            acc[0] += r.numel()
            acc[1] += float(r.sum())
            acc[2] = max(acc[2], float(r.max()))
            acc[3] += float((r > 1.0 + self.eps_high).sum())

    def result(self) -> dict[str, float]:
        """Collective: every rank must call it ({} when no row carried a staleness)."""
        merged: dict[int, list[float]] = {}
        for stats in comm.all_gather_objects(self.stats):
            for value, (n, total, top, above) in stats.items():
                acc = merged.setdefault(value, [0.0, 0.0, 0.0, 0.0])
                acc[0] += n
                acc[1] += total
                acc[2] = max(acc[2], top)
                acc[3] += above
        out: dict[str, float] = {}
        for value, (n, total, top, above) in sorted(merged.items()):
            out[f"staleness/is_weight_mean/{value}"] = total / n
            out[f"staleness/is_weight_max/{value}"] = top
            out[f"staleness/is_weight_above_cap_frac/{value}"] = above / n
            out[f"staleness/tokens/{value}"] = n
        return out
