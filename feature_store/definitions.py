"""Feature definitions shared by training, the streaming aggregates and serving.

Defined once here so the batch model, the real-time counters and the API agree
on what an event is worth.
"""

from __future__ import annotations

# Event weights from the seed system. Click and dwell are scored by dwell time
# (see models.data.event_weights); impression and search are context, not positives.
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 3.0, "like": 4.0, "purchase": 5.0}
DWELL_MIN_MS = 5_000
DWELL_UNIT_MS = 30_000
DWELL_MAX_BONUS = 3.0
POSITIVE_TYPES = (*EVENT_WEIGHTS, "dwell")
# Interactions that mark an item as seen by the user (excluded from their feeds).
SEEN_TYPES = ("view", "click", "dwell", "cart", "like", "purchase")

# Real-time windows (DESIGN: 1-minute tumbling, 10-minute sliding by 5).
TUMBLING_MS = 60_000
SLIDE_MS = 5 * 60_000
SLIDING_MS = 10 * 60_000
USER_STATS_TTL_S = 300
RECENT_MAX_ITEMS = 500
RECENT_TTL_S = 7 * 24 * 3600
