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
    return InvalidRequest(message, [{"field": field, "message": hint}])


# ---- one type per kind of failure ------------------------------------------
# Raise these; callers test them with isinstance. Each carries the stable
# ``code`` of the API's error shape; app.web.errors maps codes to HTTP
# statuses in one place.
class _Typed(ServiceError):
    CODE = "internal_error"

    def __init__(self, message: str, details: list[dict] | None = None) -> None:
        super().__init__(self.CODE, message, details)


class InvalidRequest(_Typed):
    """The request's fields or files are wrong (400)."""
    CODE = "invalid_request"


class InvalidNetwork(_Typed):
    """The network prototxt does not build (400)."""
    CODE = "invalid_network"


class InvalidPythonLayer(_Typed):
    """The uploaded Python layer does not import, instantiate or run (400)."""
    CODE = "invalid_python_layer"


class Forbidden(_Typed):
    """Known, but not this user's to do (403)."""
    CODE = "forbidden"


class NotFound(_Typed):
    """No such thing, or not one this user may see (404)."""
    CODE = "not_found"


class Conflict(_Typed):
    """Not in this state (409): e.g. resume a job that is running."""
    CODE = "conflict"


class PayloadTooLarge(_Typed):
    """Larger than a configured cap (413)."""
    CODE = "payload_too_large"


class TooManyRequests(_Typed):
    """Past a per-user limit (429)."""
    CODE = "too_many_requests"


class ServerFault(_Typed):
    """The server's own failure, never the user's (500)."""
    CODE = "internal_error"


class Unavailable(_Typed):
    """A part the request needs is down or busy (503)."""
    CODE = "unavailable"
