"""One error shape for the API, one handler that picks JSON or HTML."""
from __future__ import annotations

import errno

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, NotFound

from app.core.errors import ServiceError

# HTTP status -> stable snake_case code (API.md "Error shape").
_CODES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden",
    404: "not_found", 405: "method_not_allowed", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable", 507: "insufficient_storage",
}


# Service error code -> HTTP status.
STATUS = {
    "invalid_request": 400, "invalid_network": 400, "invalid_python_layer": 400,
    "unauthorized": 401, "forbidden": 403, "not_found": 404, "conflict": 409,
    "payload_too_large": 413, "unsupported_media_type": 415, "too_many_requests": 429,
    "internal_error": 500, "unavailable": 503, "validator_unavailable": 503, "insufficient_storage": 507,
}


class ApiError(ServiceError):
    """An error answered in the API's error shape with an explicit status
    (what views raise; services raise plain ``ServiceError``)."""

    def __init__(self, status: int, code: str, message: str,
                 details: list[dict] | None = None) -> None:
        super().__init__(code, message, details)
        self.status = status


def as_api_error(err: ServiceError) -> ApiError:
    """``err`` with its HTTP status."""
    if isinstance(err, ApiError):
        return err
    return ApiError(STATUS.get(err.code, 500), err.code, err.message, err.details)


def wants_json() -> bool:
    """JSON for the API and DIGITS-compatible routes, or when asked for."""
    path = request.path
    if path.startswith("/api/") or path.endswith(".json") or path.startswith("/models/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and not request.accept_mimetypes.accept_html


def respond(err: ApiError) -> Response:
    """The error response, JSON or HTML as the request wants."""
    if wants_json():
        resp = jsonify(err.body())
    else:
        resp = Response(render_template("error.html", error=err), mimetype="text/html")
    resp.status_code = err.status
    return resp


def register(app: Flask) -> None:
    """Install the error handlers on ``app``."""

    @app.errorhandler(ServiceError)
    def _service_error(err: ServiceError):
        return respond(as_api_error(err))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 404 and (request.url_rule is None or message == NotFound.description):
            # Werkzeug's sentence ("The requested URL was not found on the
            # server...") names nothing: say what was not found.
            message = "No such API route." if wants_json() and request.path.startswith("/api/") \
                else "No such page."
        if status == 413:
            message = ("The upload is larger than this server accepts "
                       f"({app.config['MAX_CONTENT_LENGTH'] // (1024 * 1024)} MiB), "
                       "or has too many parts or too large form fields.")
        resp = respond(ApiError(status, _CODES.get(status, "http_error"), message))
        valid = getattr(exc, "valid_methods", None)
        if status == 405 and valid:
            resp.headers["Allow"] = ", ".join(valid)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # The server's disk, not the user's request: say so, as a 507.
            app.logger.error("no space left on the jobs volume (%s) on %s", exc, request.path)
            return respond(ApiError(507, "insufficient_storage", "No space left on the jobs volume: "
                                    "nothing was saved. Try again later; the administrator has been told."))
        app.logger.exception("unhandled error on %s", request.path)
        return respond(ApiError(500, "internal_error",
                                 "The server hit an unexpected error; it has been logged."))
