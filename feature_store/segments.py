"""Segments: gender x age band x top interest, e.g. ``F|25-34|comedy``.

Training, the streaming learner and serving all derive a user's segment here, so
the three never disagree. Unknown parts become ``any``.
"""

from __future__ import annotations

from collections.abc import Iterable

ANY = "any"
GENDERS = ("F", "M")
AGE_BANDS = ((0, 17, "<18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"), (45, 54, "45-54"), (55, 200, "55+"))


def age_band(age: int | None) -> str:
    """The band label for an age in years, or ``any`` when unknown."""
    if age is None or age < 0:
        return ANY
    for low, high, label in AGE_BANDS:
        if low <= age <= high:
            return label
    return ANY


def normalise_gender(gender: str | None) -> str:
    g = (gender or "").strip().upper()[:1]
    return g if g in GENDERS else ANY


def segment_of(gender: str | None, age: int | None, interests: Iterable[str] | None) -> str:
    """The segment id of a user; the first interest is the top one."""
    top = next((i.strip().lower() for i in (interests or []) if i and i.strip()), ANY)
    return "|".join((normalise_gender(gender), age_band(age), top))


def fallbacks(segment: str) -> list[str]:
    """The segment and its coarser parents, most specific first, ending at any|any|any."""
    gender, band, interest = (segment.split("|") + [ANY, ANY, ANY])[:3]
    chain = [f"{gender}|{band}|{interest}", f"{gender}|{band}|{ANY}", f"{gender}|{ANY}|{ANY}", f"{ANY}|{ANY}|{ANY}"]
    return list(dict.fromkeys(chain))
