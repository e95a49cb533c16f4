"""Pool worker process: reads tasks as length-prefixed pickles on stdin, answers on stdout.

The protocol uses private copies of the original stdin/stdout; fds 0 and 1 are pointed at
/dev/null and stderr so that a stray print (from a library) can't corrupt a frame. The worker
exits when its parent closes the pipe (including when the parent dies).
"""

from __future__ import annotations

import os


def main() -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)

    from rewards import kinds, scoring
    from rewards.batch import recv_frame, send_frame
    from rewards.config import DEFAULT_CONFIG
    from rewards.math_reward import NOT_EQUAL, verify_inline, warm_up
    from rewards import sandbox
    from rewards import types as R
    from rewards.types import RewardResult

    scoring.IN_WORKER = True
    warm_up()
    try:
        sandbox.isolation(DEFAULT_CONFIG)
    except sandbox.SandboxUnavailableError:
        pass  # math still works; the caller refuses code items itself (rewards.batch)
    send_frame(proto_out, ("ready", os.getpid()))
    while True:
        try:
            task_id, op, args = recv_frame(proto_in)
        except EOFError:
            os._exit(0)
        try:
            if op == "score":
                kind, response, ground_truth, cfg = args  # kind: a rewards.kinds.RewardKind
                kinds.register(kind)
                value = scoring.score_with_config(kind.name, response, ground_truth, cfg)
            elif op == "verify":
                value = verify_inline(*args)
            else:
                raise ValueError(f"unknown task {op!r}")
        except BaseException as e:  # noqa: BLE001 - the parent gets a result, never a dead worker
            detail = f"{type(e).__name__}: {e}"[:500]
            if op == "verify":
                value = (NOT_EQUAL, detail)
            else:
                wrong = getattr(args[3], "wrong_reward", DEFAULT_CONFIG.wrong_reward) if len(args) == 4 else 0.0
                value = RewardResult(wrong, False, None, R.INTERNAL_ERROR, detail)
        send_frame(proto_out, (task_id, value))
