"""``GET /metrics``: Prometheus text format (collection: app.services.operations.metrics).

Open to clients on this host (loopback; behind `serve`'s nginx the client is
the address nginx forwards, app.web.throttle.client_address), and from
anywhere else only with ``Authorization: Bearer <LAYERBENCH_METRICS_TOKEN>``:
job names are not in it, but job ids, worker names and host names map the
install for an attacker. The login guard does not judge this route (a
metrics token is no user's token); this view does.

Also times every request for ``layerbench_http_request_duration_seconds``,
labelled with the URL rule (``/api/v1/jobs/<job_id>``), never the raw path.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import time

from flask import Blueprint, Flask, Response, g, request

from app.services.operations import metrics
from app.web.context import ctx, settings
from app.web.errors import ApiError

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    """Every metric, for Prometheus (see the module docstring for who may read it)."""
    _guard()
    body, content_type = metrics.exposition(ctx())
    resp = Response(body, content_type=content_type)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _guard() -> None:
    from app.web.throttle import client_address
    try:
        if ipaddress.ip_address(client_address()).is_loopback:
            return
    except ValueError:
        pass    # "unknown": judged by the token like any other client
    token = settings().metrics_token or ""
    header = request.headers.get("Authorization", "")
    if not token:
        raise ApiError(403, "forbidden", "/metrics answers clients on this host only; set "
                       "LAYERBENCH_METRICS_TOKEN and send it as 'Authorization: Bearer <token>' to scrape "
                       "from elsewhere.")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not (given and hmac.compare_digest(given.encode(), token.encode())):
        raise ApiError(401, "unauthorized", "/metrics from another host needs "
                       "'Authorization: Bearer <LAYERBENCH_METRICS_TOKEN>'.")


def _start_timer() -> None:
    g.metrics_t0 = time.perf_counter()


def _observe(resp: Response) -> Response:
    t0 = g.pop("metrics_t0", None)
    if t0 is not None:
        rule = request.url_rule
        metrics.observe_request(rule.rule if rule is not None else None, request.method, resp.status_code,
                                time.perf_counter() - t0)
    return resp


def register(app: Flask) -> None:
    """The /metrics route and the request timing, for ``app``."""
    # Under gunicorn (it sets SERVER_SOFTWARE before forking its workers)
    # several processes serve: their histograms must add up.
    metrics.setup_process(app.instance_path,
                          multiprocess=os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"))
    app.register_blueprint(bp)
    # First of the before-request hooks (the login guard's refusals count
    # too) and last of the after-request ones (the final status).
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request_funcs.setdefault(None, []).insert(0, _observe)
