"""Plain service errors: what went wrong, in the API's words, with no HTTP.

Services raise ``ServiceError(code, message, details)``; the web layer maps
the code to a status (``app.web.errors``) and the worker records it.
"""
from __future__ import annotations

# Codes that mean "the request (the user's upload or fields) is wrong":
# everything else is a state conflict or the server's own fault.
USER_FAULTS = frozenset({"invalid_request", "invalid_network", "invalid_python_layer",
                         "payload_too_large", "unsupported_media_type"})


class ServiceError(Exception):
    """A failure a caller can show: a stable snake_case ``code``, one human
    sentence and details pointing at file/line/layer."""

    def __init__(self, code: str, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.details = details or []

    @property
    def user_fault(self) -> bool:
        """True when the request itself is wrong (a 4xx the user can fix)."""
        return self.code in USER_FAULTS

    def body(self) -> dict:
        """The JSON body of this error (API.md "Error shape")."""
        return {"error": self.code, "message": self.message, "details": self.details}


def invalid_field(field: str, message: str, hint: str) -> ServiceError:
    """An invalid_request about one field: ``message`` for people, ``hint``
    (what the field takes) in its details."""
    return ServiceError("invalid_request", message, [{"field": field, "message": hint}])
