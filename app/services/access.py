"""Who may see which job or dataset: the one rule every listing, page and
route uses (never a copy of it).

Admins see everything. Everyone else sees what they own, plus built-in
datasets (owner ``None``, e.g. ``sample-digits``). Anything else is answered
as if it did not exist (404), so ids of other users' work leak nothing.
"""
from __future__ import annotations

from typing import Iterable


def may_see(user: dict | None, record: dict | None) -> bool:
    """True when ``user`` may see ``record`` (a job or dataset row)."""
    if record is None or user is None:
        return False
    if user.get("admin"):
        return True
    # Only built-in datasets have no owner (every job has one).
    owner = record.get("owner")
    return owner is None or owner == user.get("name")


def only_visible(user: dict | None, records: Iterable[dict]) -> list[dict]:
    """The records of ``records`` that ``user`` may see, in order."""
    return [r for r in records if may_see(user, r)]


def owner_filter(user: dict) -> str | None:
    """The owner to filter a store query by (None: all, for admins)."""
    return None if user.get("admin") else user["name"]
