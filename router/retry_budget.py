"""A retry budget: retries may be at most a fraction of live traffic, so they cannot storm.

As Finagle's and Envoy's retry budgets: every request deposits ``ratio`` of a retry; a retry
withdraws one; on top, ``min_per_s`` retries per second are always allowed (a quiet fleet
still fails over). Both are counted over a sliding ``window_s``. Pure and clock-injected.
"""

from __future__ import annotations

from collections import deque


class RetryBudget:
    def __init__(self, ratio: float, min_per_s: float, window_s: float) -> None:
        if not (0 <= ratio <= 1 and min_per_s >= 0 and window_s > 0):
            raise ValueError("ratio in [0, 1], min_per_s >= 0 and window_s > 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.refused = 0

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        for q in (self._requests, self._retries):
            while q and q[0] < horizon:
                q.popleft()

    def request(self, now: float) -> None:
        """A request started (it earns ``ratio`` of a retry)."""
        self._requests.append(now)
        if len(self._requests) > 65536:
            self._trim(now)

    def allowed(self, now: float) -> float:
        """Retries the window still allows."""
        self._trim(now)
        total = self.ratio * len(self._requests) + self.min_per_s * self.window_s
        return total - len(self._retries)

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget has one; False (and counted) when it does not."""
        if self.allowed(now) >= 1.0:
            self._retries.append(now)
            return True
        self.refused += 1
        return False
