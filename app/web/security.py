"""Browser-facing protections: CSRF, security headers, cookie flags. (Who
may do what lives in auth.py, which also applies the one CSRF rule: every
state-changing request authenticated by the session cookie needs the token,
on every blueprint; token and HTTP Basic requests need none.)"""
from __future__ import annotations

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

from app.web.errors import ApiError, respond

# No inline scripts or styles anywhere: every script is a static file.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
       "frame-ancestors 'none'")

csrf = CSRFProtect()


class ClosingRequest(Request):
    """A request that closes every upload stream it opened, also when the
    form parser gave up half-way (too many parts, too large): Werkzeug only
    closes the files of a completed parse, leaking descriptors under attack."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        stream = super()._get_file_stream(total_content_length, content_type, filename, content_length)
        self.__dict__.setdefault("_upload_streams", []).append(stream)
        return stream

    def close(self) -> None:
        super().close()
        for stream in self.__dict__.pop("_upload_streams", []):
            stream.close()


class TokenAwareSessionInterface(SecureCookieSessionInterface):
    """API requests that carry a bearer token get no cookie session: API
    clients never use one, and building the signed-cookie machinery per
    request was a measurable share of the job JSON route's time. (Pages keep
    theirs: their forms' CSRF tokens live in it.)"""

    def open_session(self, app, request):
        # The URL is matched only after this runs: go by path (api, DIGITS's
        # JSON routes; DIGITS's HTML pages under /models/ render forms).
        path = request.path
        if (path.startswith("/api/") or path.endswith(".json")) and \
                request.headers.get("Authorization", "")[:7].lower() == "bearer ":
            return self.null_session_class()
        return super().open_session(app, request)


_HEADERS = (("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"))


def register(app: Flask) -> None:
    """CSRF tokens (checked by auth's guard once it knows how a request
    authenticated: no blueprint is exempt), headers, cookies."""
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=app.extensions["settings"].secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True, REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=app.extensions["settings"].secure_cookies,
        WTF_CSRF_TIME_LIMIT=None,  # valid for the session: long validations and open tabs
        # Flask-WTF's blanket before-request check runs before anyone knows
        # whether the cookie or a token authenticated the request, so it
        # could only be all-or-nothing per blueprint (the hole of issue 22,
        # item 4): auth._authenticate calls csrf.protect() itself instead.
        WTF_CSRF_CHECK_DEFAULT=False,
    )
    app.request_class = ClosingRequest
    app.session_interface = TokenAwareSessionInterface()
    csrf.init_app(app)

    @app.errorhandler(CSRFError)
    def _csrf_error(err: CSRFError):
        return respond(ApiError(400, "invalid_request", "The CSRF token is missing or invalid "
                                f"({err.description}): a request signed in by the session cookie needs the "
                                "page's csrf_token (form field or X-CSRFToken header). Reload the page and "
                                "try again; API clients send 'Authorization: Bearer <token>' instead."))

    @app.after_request
    def _headers(resp: Response) -> Response:
        headers = resp.headers
        for name, value in _HEADERS:
            if name not in headers:   # a view may set its own (the SVG's CSP)
                headers[name] = value
        return resp
