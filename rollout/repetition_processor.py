"""The vLLM side of the repetition early stop (see `rollout.repetition` for the rule).

Imported only where an engine starts: it needs vLLM, which the Ray driver does not import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from rollout.repetition import EXTRA_ARG, log_threshold, parse_extra_arg


@dataclass
class _Request:
    """Per running request: the rule's parameters and how far its tokens have been checked."""

    window: int
    threshold: float
    stop_id: int | None
    output_ids: list[int]
    seen: int
    run: int = 0
    # Token ids with p > prob at the step that produced output position `candidates_pos`.
    candidates: set[int] | None = None
    candidates_pos: int = -1


class RepetitionStopProcessor(LogitsProcessor):
    """Forces a stop token once a request's last `window` sampled tokens each had p > prob.

    It reads the raw logits (before temperature / top-k / top-p, like `raw_logprobs`), records
    which tokens would count as high-probability, and on the next step checks whether the sampled
    token was one of them. Requests without the extra arg are not touched (the rule is opt-in).
    """

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:  # noqa: ANN001
        self.requests: dict[int, _Request] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:  # noqa: ANN001
        extra = sampling_params.extra_args or {}
        if EXTRA_ARG in extra:
            parse_extra_arg(extra[EXTRA_ARG])

    def is_argmax_invariant(self) -> bool:
        return False

    @staticmethod
    def _new_request(params, prompt_ids: list[int] | None, output_ids: list[int]) -> _Request | None:  # noqa: ANN001
        extra = params.extra_args or {}
        if EXTRA_ARG not in extra:
            return None
        window, prob = parse_extra_arg(extra[EXTRA_ARG])
        stops = sorted(params.all_stop_token_ids)
        return _Request(
            window=window,
            threshold=float(log_threshold(prob)),
            stop_id=stops[0] if stops else None,
            output_ids=output_ids,
            seen=len(output_ids),
        )

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, self._new_request)
        for req in self.requests.values():
            while req.seen < len(req.output_ids):
                tok = req.output_ids[req.seen]
                hit = (
                    req.candidates is not None
                    and req.candidates_pos == req.seen
                    and tok in req.candidates
                )
                req.run = req.run + 1 if hit else 0
                req.seen += 1

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.requests:
            return logits
        check_rows: list[int] = []
        for row, req in self.requests.items():
            if row >= logits.shape[0]:
                continue
            if req.run >= req.window and req.stop_id is not None:
                logits[row].fill_(float("-inf"))
                logits[row, req.stop_id] = 0.0
                req.candidates = None
            else:
                check_rows.append(row)
        if check_rows:
            rows = torch.tensor(check_rows, dtype=torch.long, device=logits.device)
            lp = logits.index_select(0, rows).log_softmax(dim=-1, dtype=torch.float32)
            thr = torch.tensor(
                [self.requests[r].threshold for r in check_rows], dtype=torch.float32, device=logits.device
            )
            pos, tok = (lp > thr[:, None]).nonzero(as_tuple=True)
            found: dict[int, set[int]] = {r: set() for r in check_rows}
            for p, t in zip(pos.tolist(), tok.tolist()):
                found[check_rows[p]].add(t)
            for r in check_rows:
                req = self.requests[r]
                req.candidates = found[r]
                req.candidates_pos = len(req.output_ids)
        return logits
