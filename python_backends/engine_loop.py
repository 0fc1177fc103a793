"""The request queue and engine thread that every Python engine runs on.

A model's ``execute`` submits requests and then blocks in :meth:`EngineLoop.wait_admitted`
until the engine has taken them, so later requests wait in Triton's priority queue rather
than in ours. One thread runs the engine's iterations while there is work.

No engine may wedge silently. An exception inside an iteration fails the requests that
iteration was running and the loop goes on; an exception from a request owner's callback
ends only that request; a failing statistics hook is logged and ignored. If iterations keep
failing, or the thread dies for any other reason, the engine declares itself dead: every
queued and running request gets an error at once, later submissions are refused at once,
and :attr:`EngineLoop.on_fatal` runs (the Triton model makes the stub exit there, so that
Triton's health checks and a restart see the failure instead of a ready model that never
answers).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from python_backends.engine_types import EngineStats, TokenEvent

S = TypeVar("S")

log = logging.getLogger(__name__)

DEFAULT_PRIORITY_LEVEL = 2
"""Where a request without a level sorts among levels 1 (highest) and up."""
MAX_CONSECUTIVE_FAILURES = 3
"""Iterations in a row that may raise before the engine is declared dead."""


class EngineDeadError(RuntimeError):
    """The engine thread has stopped for good; nothing submitted now can be served."""


class EngineLoop(Generic[S]):
    """Queue, admission wait, start/stop and failure containment.

    Subclasses schedule in :meth:`step` and end requests in :meth:`_fail`; sequences carry
    a ``priority`` (via :meth:`_priority_of`) so that the waiting queue is served in level
    order, first come first served within a level.
    """

    thread_name = "engine"

    def __init__(self) -> None:
        self.on_step: Callable[[EngineStats], None] | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self.dead_reason: str | None = None
        self._ids = itertools.count()
        self._waiting: deque[S] = deque()
        self._running: list[S] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._consecutive_failures = 0
        self._hook_failed = False
        self.last_progress = time.monotonic()
        """When the engine last completed an iteration (a wedged engine stops moving it)."""

    # -- what subclasses provide --------------------------------------------------------
    def step(self) -> object:
        """One iteration of the engine (called from the engine thread, or by tests)."""
        raise NotImplementedError

    def _fail(self, seq: S, message: str) -> None:
        """End ``seq`` with an error event (must not raise)."""
        raise NotImplementedError

    def _priority_of(self, seq: S) -> int:
        level = getattr(getattr(seq, "spec", None), "priority", None)
        return DEFAULT_PRIORITY_LEVEL if level is None else int(level)

    def _iterate(self) -> bool:
        """What the thread does when there is work; False when it made no progress (a
        hung engine). Engines with fault switches add to it."""
        self.step()
        return True

    # -- queue ----------------------------------------------------------------------------
    def _enqueue(self, seq: S) -> None:
        """Queue ``seq`` behind every waiting request of its level or a higher one."""
        with self._cond:
            if self.dead_reason is not None:
                reason = self.dead_reason
            else:
                reason = None
                level = self._priority_of(seq)
                index = len(self._waiting)
                while index > 0 and self._priority_of(self._waiting[index - 1]) > level:
                    index -= 1
                self._waiting.insert(index, seq)
                self._cond.notify_all()
        if reason is not None:
            self._fail(seq, f"engine is dead: {reason}")

    def wait_admitted(
        self, timeout: float | None = None, stall_timeout: float | None = None
    ) -> bool:
        """Block until nothing waits for a slot; False if ``timeout`` passes first, or if
        the engine completes no iteration for ``stall_timeout`` seconds.

        While this blocks, newer requests stay in Triton's priority queue, so a
        high-priority request overtakes queued lower-priority ones. A busy engine that
        keeps iterating holds the caller as long as its queue lasts; a wedged one releases
        it after ``stall_timeout``. A dead engine returns at once: its requests have
        already failed.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        with self._cond:
            while self._waiting and not self._stop and self.dead_reason is None:
                now = time.monotonic()
                remaining = None if deadline is None else deadline - now
                if remaining is not None and remaining <= 0:
                    return False
                if stall_timeout is not None:
                    # Stalled: no iteration completed in the last stall_timeout seconds of
                    # this wait (an engine that was idle before it is not stalled).
                    if now - max(self.last_progress, started) > stall_timeout:
                        return False
                    poll = stall_timeout / 4
                    remaining = poll if remaining is None else min(remaining, poll)
                self._cond.wait(remaining)
        return True

    # -- failure containment ----------------------------------------------------------------
    @staticmethod
    def _deliver(emit: Callable[[TokenEvent], None], event: TokenEvent) -> bool:
        """Hand ``event`` to its owner; False when the owner's callback raised.

        An owner whose callback fails (a client gone, a bug in the sender) loses its
        request, and nothing else does.
        """
        try:
            emit(event)
        except Exception:
            log.exception("a request's event callback failed; that request is dropped")
            return False
        return True

    @staticmethod
    def _cancelled(seq: S) -> bool:
        """The owner's ``is_cancelled``; one that raises counts as cancelled (owner gone)."""
        try:
            return bool(seq.is_cancelled())  # type: ignore[attr-defined]
        except Exception:
            log.exception("a request's is_cancelled callback failed; the request ends")
            return True

    def _emit_stats(self, stats: EngineStats) -> None:
        """Call :attr:`on_step`; a failing hook is logged once and never stops the engine."""
        if self.on_step is None:
            return
        try:
            self.on_step(stats)
        except Exception:
            if not self._hook_failed:
                log.exception("engine statistics hook failed; the engine goes on")
                self._hook_failed = True

    def _contain(self, exc: BaseException) -> None:
        """An iteration raised: fail what it was running, or die if this keeps happening."""
        self._consecutive_failures += 1
        message = f"engine iteration failed: {type(exc).__name__}: {exc}"
        log.error("%s (%d in a row)", message, self._consecutive_failures, exc_info=exc)
        with self._cond:
            running, self._running = self._running, []
        for seq in running:
            self._fail(seq, message)
        if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            self._die(f"{self._consecutive_failures} iterations in a row failed; last: {message}")

    def _die(self, reason: str) -> None:
        """Fail everything, refuse what comes next, and tell :attr:`on_fatal`."""
        with self._cond:
            if self.dead_reason is not None:
                return
            self.dead_reason = reason
            pending = [*self._waiting, *self._running]
            self._waiting.clear()
            self._running.clear()
            self._cond.notify_all()
        log.critical("engine is dead: %s", reason)
        for seq in pending:
            self._fail(seq, f"engine is dead: {reason}")
        if self.on_fatal is not None:
            with contextlib.suppress(Exception):
                self.on_fatal(reason)

    # -- thread -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        """The thread runs and the engine has not been declared dead."""
        return self.dead_reason is None and self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread and fail whatever is still queued or running."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._cond:
            pending = [*self._waiting, *self._running]
            self._waiting.clear()
            self._running.clear()
        for seq in pending:
            self._fail(seq, "engine stopped")

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the loop itself broke: nothing may hang behind it
            self._die(f"engine thread crashed: {type(exc).__name__}: {exc}")
            raise
        if not self._stop:
            self._die("engine thread exited")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stop or self.dead_reason is not None:
                    return
            try:
                progressed = self._iterate()
            except Exception as exc:
                self._contain(exc)
                if self.dead_reason is not None:
                    return
            else:
                self._consecutive_failures = 0
                if progressed:
                    self.last_progress = time.monotonic()
