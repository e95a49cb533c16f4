"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint, exit 0."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Callable

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any] | int | None


class GracefulStop:
    """First SIGTERM/SIGINT: set `requested` (the loop checkpoints after the current step and exits).
    Second one: the previous handlers come back and the signal is re-delivered, so a user pressing
    Ctrl-C twice (or a scheduler sending SIGTERM twice) stops the process right away.

    Use as a context manager (or `install()` / `uninstall()`); only from the main thread, because
    Python delivers signals there only.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        if not signals:
            raise ValueError("signals must name at least one signal")
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Handler] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name

    def install(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("GracefulStop.install() must be called from the main thread")
        if self._previous:
            raise RuntimeError("GracefulStop is already installed")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def __enter__(self) -> "GracefulStop":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                "received %s: stopping after the current step (with a checkpoint); "
                "send it again to stop immediately",
                signal.Signals(signum).name,
            )
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.uninstall()
        log.warning("received %s again: stopping now", signal.Signals(signum).name)
        if callable(previous):
            previous(signum, frame)  # e.g. Python's default SIGINT handler: KeyboardInterrupt
        elif previous == signal.SIG_DFL or previous is None:
            os.kill(os.getpid(), signum)  # handler is now SIG_DFL: the default action happens
