"""The request queue and engine thread that every Python engine runs on.

A model's ``execute`` submits requests and then blocks in :meth:`EngineLoop.wait_admitted`
until the engine has taken them, so later requests wait in Triton's priority queue rather
than in ours. One thread runs the engine's iterations while there is work.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from python_backends.engine_types import EngineStats

S = TypeVar("S")


class EngineLoop(Generic[S]):
    """Queue, admission wait, start/stop; subclasses schedule in :meth:`step`."""

    thread_name = "engine"

    def __init__(self) -> None:
        self.on_step: Callable[[EngineStats], None] | None = None
        self._ids = itertools.count()
        self._waiting: deque[S] = deque()
        self._running: list[S] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    def step(self) -> object:
        """One iteration of the engine (called from the engine thread, or by tests)."""
        raise NotImplementedError

    def _fail(self, seq: S, message: str) -> None:
        """End ``seq`` with an error event."""
        raise NotImplementedError

    def _iterate(self) -> None:
        """What the thread does when there is work; engines with fault switches add to it."""
        self.step()

    def _enqueue(self, seq: S) -> None:
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify_all()

    def wait_admitted(self, timeout: float | None = None) -> bool:
        """Block until nothing waits for a slot; False if ``timeout`` passes first.

        While this blocks, newer requests stay in Triton's priority queue, so a
        high-priority request overtakes queued lower-priority ones.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._waiting and not self._stop:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and fail whatever is still queued or running."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for seq in [*self._waiting, *self._running]:
            self._fail(seq, "engine stopped")
        self._waiting.clear()
        self._running.clear()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stop:
                    return
            self._iterate()
