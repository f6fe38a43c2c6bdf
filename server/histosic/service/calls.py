"""Work that ends with its caller: a passed deadline, a client that went away, or the server
stopping ends a running Cluster or Colors call, not only the wait for it.

:meth:`CallGuard.run` runs the work on the request's own thread and registers it; one watcher
thread checks every registered call each ``poll`` seconds and, when a call has no reason to go on,
raises :class:`_CallEnded` *in that thread* (CPython's ``PyThreadState_SetAsyncExc``). The
exception arrives at the next Python bytecode the thread runs: between numpy calls, so a single
long BLAS or C routine finishes first (the clustering's costs are bounded per call, see
docs/SERVER.md). ``_CallEnded`` derives from ``BaseException``, so no ``except Exception`` in
the core swallows it; ``with`` blocks and ``finally`` clauses run as for any exception, so locks
are released and partial files removed. The call then answers DEADLINE_EXCEEDED (deadline) or
CANCELLED (client gone, server stopping).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from histosic.errors import CancelledError, DeadlineExceededError, HistosicError

__all__ = ["CallGuard"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SET_ASYNC_EXC = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_CLEAR_ASYNC_EXC = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class _CallEnded(BaseException):
    """Raised inside a call's thread when the call has no reason to go on."""


@dataclass
class _Call:
    rpc: str
    deadline: float | None  # time.monotonic()
    gone: Callable[[], bool] | None
    started: float
    ended: str = ""  # why, once the exception was sent


class CallGuard:
    """Register calls, end those whose deadline passed, whose client left, or all on stop.

    Parameters
    ----------
    poll : float
        Seconds between checks (the latency of ending a call, plus the bytecode it waits for).
    """

    def __init__(self, poll: float = 0.05) -> None:
        self.poll = float(poll)
        self._lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.ended = 0  # calls ended by the guard (for the tests and the log)

    def in_flight(self) -> int:
        """Calls whose work is running now."""
        with self._lock:
            return len(self._calls)

    def stop(self) -> None:
        """End every call in flight (the server is stopping) and refuse no new ones."""
        self._stopping.set()

    def run(
        self,
        rpc: str,
        fn: Callable[[], T],
        *,
        timeout: float | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> T:
        """``fn()`` on this thread, ended early when ``timeout`` seconds pass, when ``gone()``
        turns true, or when the server stops.

        Raises
        ------
        DeadlineExceededError
            The deadline passed first.
        CancelledError
            The client went away or the server is stopping.
        """
        now = time.monotonic()
        if self._stopping.is_set():
            raise CancelledError(f"{rpc}: the server is shutting down; call again later")
        if timeout is not None and timeout <= 0:
            raise DeadlineExceededError(f"{rpc}: the deadline had passed before the call began")
        call = _Call(rpc, None if timeout is None else now + timeout, gone, now)
        tid = threading.get_ident()
        with self._lock:
            self._calls[tid] = call
            self._ensure_watcher()
        try:
            try:
                result = fn()
            finally:
                self._leave(tid)
        except _CallEnded:
            raise self._error(call) from None
        return result

    # -- internals ------------------------------------------------------------------------
    def _error(self, call: _Call) -> HistosicError:
        spent = time.monotonic() - call.started
        if call.ended == "deadline":
            return DeadlineExceededError(
                f"{call.rpc}: the deadline passed after {spent:.1f} s; the work was stopped (ask "
                "less, e.g. fewer seeds, or allow more time)"
            )
        if call.ended == "stopping":
            return CancelledError(
                f"{call.rpc}: the server is shutting down; the work was stopped after {spent:.1f} s"
            )
        return CancelledError(f"{call.rpc}: the client went away; the work was stopped")

    def _leave(self, tid: int) -> None:
        """Unregister this thread's call and drop an exception sent but not yet raised."""
        while True:
            try:
                with self._lock:
                    self._calls.pop(tid, None)
                    _CLEAR_ASYNC_EXC(tid, None)
                return
            except _CallEnded:  # sent just before the lock was taken: clear it again
                continue

    def _ensure_watcher(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._watch, name="histosic-call-guard", daemon=True
            )
            self._thread.start()

    def _why(self, call: _Call, now: float) -> str:
        if self._stopping.is_set():
            return "stopping"
        if call.deadline is not None and now >= call.deadline:
            return "deadline"
        if call.gone is not None:
            try:
                if call.gone():
                    return "gone"
            except Exception:  # a transport that cannot tell: keep the call
                log.debug("cannot tell whether the client of %s is there", call.rpc, exc_info=True)
        return ""

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll)
            with self._lock:
                if not self._calls:
                    self._thread = None
                    return
                now = time.monotonic()
                for tid, call in self._calls.items():
                    if call.ended:
                        continue
                    why = self._why(call, now)
                    if why:
                        call.ended = why
                        self.ended += 1
                        _SET_ASYNC_EXC(tid, _CallEnded)
                        log.info("%s ended (%s) after %.2f s", call.rpc, why, now - call.started)
