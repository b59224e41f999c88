"""Who is asking. Until accounts land (issue 4) every request acts as the
single local user ``admin`` and the server binds to 127.0.0.1 by default."""
from __future__ import annotations

LOCAL_USER = {"name": "admin", "admin": True}


def current_user() -> dict:
    """The user of the current request."""
    return LOCAL_USER
