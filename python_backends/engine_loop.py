"""The request queue and engine thread that every Python engine runs on.

A model's ``execute`` submits its requests and returns at once, as the TensorRT-LLM backend
hands requests to its executor: requests wait in the engine's own queue, ordered by Triton
priority level (first come, first served within a level). One thread runs the engine's
iterations while there is work.

Admission is one rule for every engine (:meth:`EngineLoop._admit_waiting`): the head of the
queue runs when a slot is free, and level :data:`TOP_PRIORITY_LEVEL` (the router's health
canaries) may run up to :data:`TOP_PRIORITY_SLOTS` sequences beyond ``max_num_sequences``,
so a node whose batch is full of ordinary work still answers its canary at once. A request
cancelled while it waits is dropped when it reaches the head, before it takes a slot.

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
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from python_backends.engine_types import EngineStats, TokenEvent

S = TypeVar("S")

log = logging.getLogger(__name__)

DEFAULT_PRIORITY_LEVEL = 2
"""Where a request without a level sorts among levels 1 (highest) and up."""
TOP_PRIORITY_LEVEL = 1
"""The top Triton level, the router's health canaries."""
TOP_PRIORITY_SLOTS = 2
"""Sequences of :data:`TOP_PRIORITY_LEVEL` that may run beyond ``max_num_sequences``."""
TOP_PRIORITY_RESERVE_TOKENS = 2 * 256
"""KV room kept for top-level requests only (a couple of short ones), in tokens: an engine
whose KV pool is full of ordinary reservations still admits a canary."""
MAX_CONSECUTIVE_FAILURES = 3
"""Iterations in a row that may raise before the engine is declared dead."""


def context_tail(prompt: Sequence[int], generated: Sequence[int], n: int) -> tuple[int, ...]:
    """The last ``n`` tokens of a sequence's context: its prompt, then what it generated.

    Engines match stop and bad words and choose tokens over the context, never over the
    output alone, so that a request re-sent with its output appended to its prompt (a
    stream the router moves to another node) continues as the unbroken run would.
    """
    if n <= 0:
        return ()
    if n <= len(generated):
        return tuple(generated[len(generated) - n :])
    return (*prompt[max(len(prompt) - (n - len(generated)), 0) :], *generated)


class EngineDeadError(RuntimeError):
    """The engine thread has stopped for good; nothing submitted now can be served."""


class EngineLoop(Generic[S]):
    """Queue, admission, start/stop and failure containment.

    Subclasses schedule in :meth:`step`, end requests in :meth:`_fail` and say their
    batch size in :meth:`_max_sequences`; sequences carry a ``priority`` (via
    :meth:`_priority_of`) so that the waiting queue is served in level order, first come
    first served within a level.
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

    # -- what subclasses provide --------------------------------------------------------
    def step(self) -> object:
        """One iteration of the engine (called from the engine thread, or by tests)."""
        raise NotImplementedError

    def _fail(self, seq: S, message: str) -> None:
        """End ``seq`` with an error event (must not raise)."""
        raise NotImplementedError

    def _max_sequences(self) -> int:
        """``max_num_sequences``: how many ordinary sequences may run at once."""
        raise NotImplementedError

    def _priority_of(self, seq: S) -> int:
        level = getattr(getattr(seq, "spec", None), "priority", None)
        return DEFAULT_PRIORITY_LEVEL if level is None else int(level)

    def _iterate(self) -> None:
        """What the thread does when there is work. Engines with fault switches add to it."""
        self.step()

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

    def _is_top(self, seq: S) -> bool:
        return self._priority_of(seq) <= TOP_PRIORITY_LEVEL

    def _has_slot(self, top: bool) -> bool:
        """Whether one more sequence may run: ordinary ones up to ``max_num_sequences``,
        top-level ones up to :data:`TOP_PRIORITY_SLOTS` beyond it (call holding the lock)."""
        limit = self._max_sequences() + (TOP_PRIORITY_SLOTS if top else 0)
        return len(self._running) < limit

    def _admit_waiting(self, place: Callable[[S, bool], bool] | None = None) -> list[S]:
        """Move waiting sequences to the running list, head first, while slots allow.

        ``place(seq, top)`` takes what else ``seq`` needs (KV blocks) and says whether it
        got it; ``top`` tells it the sequence is of :data:`TOP_PRIORITY_LEVEL`. It runs
        holding the lock, so it must be quick. A refusal ends admission for this iteration:
        the queue is served in order (``guaranteed_no_evict``). The head is asked whether
        it was cancelled before it takes a slot (once per attempt, and never the rest of
        the queue: asking costs the real model a round trip to the server); a cancelled
        one is dropped with a "cancelled" error. Returns the admitted sequences in order.
        """
        admitted: list[S] = []
        while True:
            with self._cond:
                if not self._waiting:
                    break
                seq = self._waiting[0]
                if not self._has_slot(self._is_top(seq)):
                    break
            # Asked without the lock: submissions must not wait on the owner's answer.
            if self._cancelled(seq):
                with self._cond:
                    dropped = self._remove_waiting(seq)
                if dropped:
                    self._fail(seq, "cancelled")
                continue
            with self._cond:
                if not self._waiting or self._waiting[0] is not seq:
                    continue  # a top-level request went ahead of it, or the engine died
                if place is not None and not place(seq, self._is_top(seq)):
                    break
                self._waiting.popleft()
                self._running.append(seq)  # running from here on: a failure fails it
            admitted.append(seq)
        return admitted

    def _remove_waiting(self, seq: S) -> bool:
        """Take ``seq`` (by identity) out of the waiting queue; False if it is not there."""
        for index, queued in enumerate(self._waiting):
            if queued is seq:
                del self._waiting[index]
                return True
        return False

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
                self._iterate()
            except Exception as exc:
                self._contain(exc)
                if self.dead_reason is not None:
                    return
            else:
                self._consecutive_failures = 0
