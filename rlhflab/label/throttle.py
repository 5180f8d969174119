"""Failed-login throttling: a sliding window of failures per username and per client address.

Checked before the password is hashed, so a refused attempt costs no argon2 time, and keyed by the username as
typed, so real and unknown users are refused alike (no enumeration). State is per server process and is lost
on restart; a locked-out admin can wait out the window or restart the server.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_KEYS = 100_000  # distinct usernames + addresses remembered; the least recently failed are forgotten first


class LoginThrottle:
    def __init__(self, per_user: int, per_address: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.limits = {"user": per_user, "addr": per_address}
        self.window_s, self.clock = window_s, clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds until this username and address may try again, or None when they may now."""
        now = self.clock()
        waits = []
        with self._lock:
            for key in (("user", username), ("addr", address)):
                times = self._recent(key, now)
                if len(times) >= self.limits[key[0]]:
                    waits.append(times[len(times) - self.limits[key[0]]] + self.window_s - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (("user", username), ("addr", address)):
                self._recent(key, now).append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, username: str) -> None:
        """A right password clears the username's failures (not the address's: one address may try many)."""
        with self._lock:
            self._failures.pop(("user", username), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times
