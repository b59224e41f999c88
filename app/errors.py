"""One error shape for the API, one handler that picks JSON or HTML."""
from __future__ import annotations

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

# HTTP status -> stable snake_case code (API.md "Error shape").
_CODES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden",
    404: "not_found", 405: "method_not_allowed", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


class ApiError(Exception):
    """An error answered in the API's error shape."""

    def __init__(self, status: int, code: str, message: str,
                 details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []

    def body(self) -> dict:
        """The JSON body of this error."""
        return {"error": self.code, "message": self.message, "details": self.details}


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

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return respond(err)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
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
        app.logger.exception("unhandled error on %s", request.path)
        return respond(ApiError(500, "internal_error",
                                 "The server hit an unexpected error; it has been logged."))
