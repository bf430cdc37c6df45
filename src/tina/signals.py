"""SIGINT / SIGTERM during training: the first finishes the step and checkpoints, a second aborts at once."""

from __future__ import annotations

import os
import signal
import threading


class GracefulStop:
    """SIGINT/SIGTERM during the loop: the first asks it to stop after the current step (it checkpoints and returns);
    a second one aborts at once with KeyboardInterrupt.  Installed only in the main thread; restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.reason: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        os.write(
            2, f"\n{self.reason}: finishing this step and saving a checkpoint (Ctrl-C again aborts at once)\n".encode()
        )
