"""Stop signals while training: SIGINT / SIGTERM end a run at a step boundary with an exact checkpoint."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Signals that stop training at the next step boundary with an exact checkpoint."""


class StopSignals:
    """SIGINT / SIGTERM handlers while training (a context manager; installed in the main thread only).

    The first signal sets ``signum``: the loop finishes the optimizer step under way, writes an exact
    checkpoint and raises :func:`exit_exception`. A second signal raises it at once (``forced``).
    The previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.forced = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            self.forced = True
            os.write(2, f"\nscfm: second {name}: stopping at once\n".encode())
            raise exit_exception(signum)
        self.signum = signum
        os.write(2, f"\nscfm: {name}: stopping after the current step (send it again to stop at once)\n".encode())


def exit_exception(signum: int) -> BaseException:
    """What a stop signal ends the program with: ``KeyboardInterrupt`` for SIGINT (exit status 130 from
    the CLI), ``SystemExit(128 + signum)`` otherwise (143 for SIGTERM)."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)
