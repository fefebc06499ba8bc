"""One circuit breaker for the API's dependencies (Redis reads, Kafka event batches).

After a failure the breaker is open for ``cooldown_s``: callers check it first and
fail at once instead of making every request wait out its own timeout (and pile up
waiting requests or worker threads) while a dependency is down. Once the cooldown has
passed, the next call tries again, so the API recovers by itself.
"""

from __future__ import annotations

import time


class Breaker:
    """Open for ``cooldown_s`` after :meth:`trip`; closed again once that has passed."""

    __slots__ = ("cooldown_s", "_open_until")

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self._open_until = 0.0

    def is_open(self) -> bool:
        """Whether calls should fail fast now (cheap when closed: one attribute test)."""
        if self._open_until:
            if time.monotonic() < self._open_until:
                return True
            self._open_until = 0.0
        return False

    def trip(self) -> None:
        """A call failed: open the breaker for ``cooldown_s`` from now."""
        self._open_until = time.monotonic() + self.cooldown_s
