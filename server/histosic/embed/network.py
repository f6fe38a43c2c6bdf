"""Is the internet there? A short connection probe, remembered for a minute (no torch here).

The registry asks before it promises a download (``ListModels``, ``histosic models``) and before
it starts one, so an offline machine fails at once instead of hanging in a download client. The
answer is cached for :data:`DEFAULT_TTL` seconds on the monotonic clock: a long-running server
notices the network coming or going, and a listing does not probe once per model.
``config.current().offline`` (``HISTOSIC_OFFLINE=1``) skips the probe altogether.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from histosic import config

__all__ = ["DEFAULT_TTL", "NetworkProbe", "default_probe", "online"]

#: Seconds a probe's answer is reused.
DEFAULT_TTL = 60.0


def _connect(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class NetworkProbe:
    """Whether ``host:port`` accepts a TCP connection, each answer reused for ``ttl`` seconds.

    Parameters
    ----------
    ttl : float
        Seconds an answer is reused (0: probe every time).
    clock : callable
        Seconds on a monotonic clock (tests inject a fake one).
    connect : callable
        ``connect(host, port, timeout) -> bool``, the probe itself (one short TCP connection).
    """

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        *,
        clock: Callable[[], float] = time.monotonic,
        connect: Callable[[str, int, float], bool] = _connect,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._connect = connect
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, int], tuple[float, bool]] = {}

    def reachable(self, host: str, port: int = 443, timeout: float = 3.0) -> bool:
        key = (host, port)
        now = self._clock()
        with self._lock:
            hit = self._answers.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        ok = self._connect(host, port, timeout)
        with self._lock:
            self._answers[key] = (self._clock(), ok)
        return ok

    def forget(self) -> None:
        """Drop every remembered answer."""
        with self._lock:
            self._answers.clear()


#: The process's probe (replace it, e.g. with ``monkeypatch``, to fake the network).
default_probe = NetworkProbe()


def online(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` is reachable now; False at once when the settings say offline."""
    if config.current().offline:
        return False
    return default_probe.reachable(host, port, timeout)
