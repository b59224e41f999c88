"""Job listings: one page of the jobs a user may see, newest first, with
opaque cursors (keyset paging, so a page costs the same with 20,000 jobs
in the store as with 100), and the parsing of the listing's query values."""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from app.core.errors import InvalidRequest, invalid_field
from app.core.status import JobStatus
from app.services.access import only_visible, owner_filter
from app.services.context import Context


PAGE_SIZE, MAX_PAGE_SIZE = 50, 500


@dataclass
class JobPage:
    """One page of a job listing: ``jobs`` newest first and the opaque
    cursor of the next (older) page, None on the last page."""
    jobs: list[dict]
    next_cursor: str | None


def parse_limit(raw: str | int | None) -> int:
    """A page size from a query string: default PAGE_SIZE, 1..MAX_PAGE_SIZE."""
    if raw is None or raw == "":
        return PAGE_SIZE
    text = str(raw).strip()
    limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise invalid_field("limit", f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.",
                   f"1..{MAX_PAGE_SIZE} (default {PAGE_SIZE})")
    return limit


def encode_cursor(key: tuple[str, str]) -> str:
    """The opaque cursor of a page position (the (created_at, id) of its last row)."""
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The position a cursor of ``encode_cursor`` names; invalid_request otherwise."""
    try:
        if len(cursor) > 400:
            raise ValueError
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (not isinstance(key, list) or len(key) != 2
                or not all(isinstance(k, str) and 0 < len(k) <= 80 for k in key)):
            raise ValueError
    except ValueError:   # binascii.Error and JSON errors included
        raise invalid_field("cursor", "The cursor is not one this server handed out.",
                   "pass next_cursor of the previous page unchanged") from None
    return key[0], key[1]


def parse_ids(raw: str | None) -> list[str] | None:
    """Job ids from a comma-separated query value (at most MAX_PAGE_SIZE)."""
    if raw is None:
        return None
    ids = [i for i in (part.strip() for part in raw.split(",")) if i]
    if len(ids) > MAX_PAGE_SIZE or any(len(i) > 40 for i in ids):
        raise invalid_field("ids", f"ids takes at most {MAX_PAGE_SIZE} job ids.", "comma-separated job ids")
    return ids


def list_for(c: Context, user: dict, status: str | None = None, *, limit: int = PAGE_SIZE,
             cursor: str | None = None, owner: str | None = None, dataset: str | None = None,
             ids: list[str] | None = None) -> JobPage:
    """One page of the jobs ``user`` may see, newest first: ``limit`` jobs
    older than ``cursor`` (a ``next_cursor`` of an earlier page; None: the
    newest). ``status``, ``owner``, ``dataset`` and ``ids`` filter. Who sees
    what is app.services.access: a user asking for another owner's jobs gets
    an empty page unless that rule lets them see that owner's work."""
    if status is not None and status not in {s.value for s in JobStatus}:
        raise InvalidRequest(f"Unknown status '{status[:20]}'.",
                           [{"field": "status", "message": "use " + "|".join(s.value for s in JobStatus)}])
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise invalid_field("limit", f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.", f"1..{MAX_PAGE_SIZE}")
    after = decode_cursor(cursor) if cursor else None
    scope = owner_filter(user)
    if owner is not None and scope is not None and owner != scope:
        return JobPage([], None)
    if ids is not None and not ids:
        return JobPage([], None)
    rows, last = c.store.page_jobs(limit=limit, after=after, owner=owner if owner is not None else scope,
                                   status=status, dataset=dataset, ids=ids)
    # The query is already scoped; this keeps the one rule the last word.
    return JobPage(only_visible(user, rows), encode_cursor(last) if last else None)
