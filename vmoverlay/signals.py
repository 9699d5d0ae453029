"""Stop signals (SIGTERM, SIGINT) handled outside the signal handler.

A Python signal handler runs in the main thread between two bytecodes, possibly
while that thread holds a lock: inside ``threading.Event.wait()`` (the
condition's lock), or inside a logging call (the handler's lock, the stream's
buffer). A handler that sets an Event or logs can therefore deadlock the
process for good (the node agent hung on SIGTERM while its reconcile loop waited
on an Event, until SIGKILL) or fail with "reentrant call".

:class:`StopSignals` keeps the handler to one ``os.write`` of the signal number
on a pipe (a system call: no Python lock). A daemon thread reading that pipe
calls the component's callback in ordinary thread context, where setting
Events, joining threads and logging are safe. Use it in every long-running CLI::

    signals = StopSignals(lambda sig: stop_everything(sig)).install()
    try:
        ...
    finally:
        signals.close()
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_CLOSE = 0  # no signal has number 0: the byte that ends the reader thread
_Handler = Callable[[int, FrameType | None], Any] | int | None


class StopSignals:
    """Call ``on_signal(sig)`` from a helper thread each time one of ``signals`` arrives."""

    def __init__(
        self,
        on_signal: Callable[[signal.Signals], None],
        signals: Sequence[signal.Signals] = STOP_SIGNALS,
    ) -> None:
        self.on_signal = on_signal
        self.signals = tuple(signals)
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous: dict[signal.Signals, _Handler] = {}
        self._thread = threading.Thread(target=self._loop, name="stop-signals", daemon=True)

    def install(self) -> StopSignals:
        """Start the reader and set the handlers (main thread only, as for signal.signal)."""
        self._thread.start()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def close(self) -> None:
        """Restore the previous handlers and end the reader thread (bounded wait)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        self._send(_CLOSE)
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if not self._thread.is_alive():
            os.close(self._write)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread at any bytecode: a system call only, no lock.
        self._send(signum)

    def _send(self, value: int) -> None:
        # A full pipe already holds a wake-up for the reader: this one may go.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, bytes([value]))

    def _loop(self) -> None:
        try:
            while True:
                data = os.read(self._read, 64)
                for value in data:
                    if value == _CLOSE:
                        return
                    self.on_signal(signal.Signals(value))
                if not data:
                    return
        finally:
            os.close(self._read)
