"""Feed refresh rules shared by the daily publication and the online learner.

A refresh does not throw the previous feed away (the seed system's aging): it
keeps a share of the previous feed's items the user has not seen, spread through
the new ranking, so good older items are not starved by a new model's taste.
It also reserves exploration slots for new items, so they get impressions and
therefore the feedback that lets a model learn them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from feature_store.online import Feed

EXPLORATION_POSITIONS = (2, 7, 12, 17, 22)


def refresh_feed(
    new: Feed,
    previous: Feed | None,
    seen: Collection[str] = (),
    new_items: Sequence[str] = (),
    keep_share: float = 0.2,
    exploration_slots: int = 2,
    size: int | None = None,
) -> Feed:
    """The feed to publish: ``new``'s ranking, with aged and exploration items mixed in."""
    size = size or len(new.items)
    seen = set(seen)
    kept: list[str] = []
    if previous is not None and keep_share > 0:
        budget = int(keep_share * size)
        kept = [i for i in previous.items if i not in seen][:budget]
    explore_budget = min(exploration_slots, len(EXPLORATION_POSITIONS))
    taken = set(kept)
    explore = [i for i in new_items if i not in seen and i not in taken][:explore_budget]
    taken |= set(explore)
    base = [i for i in new.items if i not in seen and i not in taken][: max(0, size - len(kept) - len(explore))]
    items = list(base)
    for j, item in enumerate(kept):  # spread evenly, never at the very top
        items.insert(min(len(items), round((j + 1) * len(items) / (len(kept) + 1)) or 1), item)
    for position, item in zip(EXPLORATION_POSITIONS, explore):
        items.insert(min(position, len(items)), item)
    score = dict(zip(new.items, new.scores or [0.0] * len(new.items)))
    return Feed(items=items[:size], model_version=new.model_version, generated_at_ms=new.generated_at_ms,
                scores=[float(score.get(i, 0.0)) for i in items[:size]])
