"""Threshold keys: a cosine ("0.95") or a false-removal budget ("1%").

A cosine removes an image whose similarity to a kept image of its class exceeds it, the
same number in every class. A budget is resolved per class (and per similarity space) to
the cosine at which at most that share of the images without a duplicate would be
removed (`core.decision.calibration`), so it means the same thing in every class and space.
"""

from __future__ import annotations


def budget_of(key: str) -> float | None:
    """The budget of a key like "1%" or "0.5%" as a share (0.01), None for a cosine key."""
    key = key.strip()
    if not key.endswith("%"):
        return None
    return float(key[:-1]) / 100.0


def cosine_of(key: str) -> float | None:
    """The cosine of a cosine key ("0.95" -> 0.95), None for a budget key."""
    return None if key.strip().endswith("%") else float(key)


def parse_key(key: str) -> tuple[str, float]:
    """("cosine" | "budget", value) of a key, checked: a cosine in (0, 1), a budget in
    (0%, 100%). Raises ValueError naming the key."""
    key = key.strip()
    if key.endswith("%"):
        try:
            share = float(key[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"threshold {key!r} is not a number or a percentage") from None
        if not 0.0 < share < 1.0:
            raise ValueError(f"false-removal budget {key} must lie strictly between 0% and 100%")
        return "budget", share
    try:
        number = float(key)
    except ValueError:
        raise ValueError(f"threshold {key!r} is not a number") from None
    if not 0.0 < number < 1.0:
        raise ValueError(f"threshold {key} must lie strictly between 0 and 1")
    return "cosine", number


def canonical_key(key: str) -> str:
    """The one spelling of a key's value (checked by `parse_key`): the shortest decimal
    that reads back as the same number, "%" for a budget, without a trailing ".0":
    "0.950" and ".95" are "0.95", "1.0%" is "1%". A run's keep lists, clean copies and
    partitions are named by it, so the same threshold written two ways is one threshold."""
    kind, number = parse_key(key)
    # A budget by its percentage as written, not share * 100's rounding (0.07 * 100).
    value = float(key.strip()[:-1]) if kind == "budget" else number
    text = repr(value)
    text = text[:-2] if text.endswith(".0") else text
    return f"{text}%" if kind == "budget" else text
