"""nginx in front of gunicorn, as `serve` runs it.

gunicorn's gthread worker gives each connection a thread as soon as its first
byte arrives and keeps it until the whole request has been read, so a few
dozen clients trickling a request byte by byte hold every thread and nothing
else (``/healthz`` included) is answered. nginx reads requests with an event
loop at no cost per idle connection, buffers each one whole (headers and
body), and only then hands it to gunicorn over a unix socket, where it is
read at memory speed. Responses are buffered too, so slow readers do not hold
threads either; Server-Sent Events are the exception and stream unbuffered.

Everything nginx needs lives in ``<instance>/run`` (config, pid file, the
lock that keeps a second `serve` off this instance) so that nginx runs the
same way as root and as an ordinary user. As root, nginx's worker processes
drop to ``www-data``; they then need a directory they can reach for the
upstream socket and their temp files, and the instance dir (database, keys)
must stay out of their reach: that one directory is a private 0750 folder
under /var/lib/nginx (or /tmp), made per start and removed at stop.
"""
from __future__ import annotations

import fcntl
import grp
import os
import pwd
import resource
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Debian installs nginx in /usr/sbin, which is not on an ordinary user's PATH.
_NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
# A request's headers must arrive whole within this; a body may pause this
# long between two reads. Slow clients then cost nginx a little memory, never
# a gunicorn thread, and are dropped when they stall.
HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 30
# Contained validation may take LAYERBENCH_VALIDATE_TIMEOUT (60 s) plus start-up.
UPSTREAM_READ_TIMEOUT_S = 600
# The job event stream ends itself after 6 hours (api.job_events); it may be
# silent for long stretches while a job waits in the queue.
EVENTS_READ_TIMEOUT_S = 7 * 3600
EVENTS_ROUTE = r"^/api/v1/jobs/[^/]+/events$"
# Idle upstream connections: nginx closes them after this; gunicorn, started
# behind nginx, keeps them GUNICORN_KEEPALIVE_S (longer, so nginx goes first).
UPSTREAM_KEEPALIVE_S = 60
GUNICORN_KEEPALIVE_S = 75


def find_nginx() -> str | None:
    """The nginx binary, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in _NGINX_CANDIDATES if os.access(p, os.X_OK)), None)


class InstanceBusy(RuntimeError):
    """Another `serve` is already running on this instance dir."""


@dataclass
class Front:
    """One prepared nginx: its command line, and where gunicorn must listen."""

    argv: list[str]
    socket: Path                 # gunicorn binds here; nginx proxies to it
    runtime: Path                # <instance>/run: config, pid, lock
    private: Path | None = None  # socket + temp files, when they cannot be in runtime
    _lock: int | None = field(default=None, repr=False)

    def close(self) -> None:
        """Remove what this start made (after nginx and gunicorn stopped)."""
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)
        else:
            self.socket.unlink(missing_ok=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def prepare(nginx: str, instance: str | Path, host: str, port: int, max_upload_mb: int,
            stream_slots: int) -> Front:
    """Write ``<instance>/run/nginx.conf`` for nginx listening on ``host:port``
    and return how to start it; at most ``stream_slots`` event streams are
    open at once. Raises ``InstanceBusy`` when another `serve` holds this
    instance dir (its socket would be replaced under it)."""
    runtime = Path(instance) / "run"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(runtime / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise InstanceBusy(f"another `serve` is running on {instance} (it holds {runtime / 'serve.lock'})")
    try:
        user = _worker_user() if os.geteuid() == 0 else None
        # A unix socket path holds at most 107 bytes; a deep instance dir
        # gets a short private one too.
        private = _private_dir(user) if user or len(str(runtime / "gunicorn.sock")) > 100 else None
        shared = private or runtime
        conf = runtime / "nginx.conf"
        conf.write_text(config_text(runtime, shared, host, port, max_upload_mb, stream_slots, user))
    except BaseException:
        os.close(lock)
        raise
    return Front(argv=[nginx, "-p", str(runtime), "-c", str(conf), "-e", "stderr"],
                 socket=shared / "gunicorn.sock", runtime=runtime, private=private, _lock=lock)


def _worker_user() -> tuple[str, str]:
    # Debian's web server account; "nobody" has no same-named group on Debian.
    for name, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        try:
            pwd.getpwnam(name), grp.getgrnam(group)
            return name, group
        except KeyError:
            continue
    raise RuntimeError("neither www-data nor nobody exists to run nginx's workers as")


def _private_dir(user: tuple[str, str] | None) -> Path:
    # Debian's nginx keeps its own temp files in /var/lib/nginx: on disk
    # (each upload, up to MAX_UPLOAD_MB, is buffered there: too much for a
    # tmpfs like /run) and cleaned by nothing while we run.
    base = "/var/lib/nginx" if user and os.access("/var/lib/nginx", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="layerbench-nginx-", dir=base))   # 0700, ours
    if user:
        os.chown(path, os.geteuid(), grp.getgrnam(user[1]).gr_gid)
        path.chmod(0o750)   # root and nginx's workers, nobody else
    return path


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def config_text(runtime: Path, shared: Path, host: str, port: int, max_upload_mb: int,
                stream_slots: int, user: tuple[str, str] | None) -> str:
    """The nginx config: listen on ``host:port``, proxy to gunicorn's socket
    in ``shared``; ``user`` runs the worker processes (root only)."""
    # Each proxied request holds two descriptors (client and upstream); raise
    # the soft limit as far as the hard one allows rather than refuse clients.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    temp = "\n".join(f"    {kind}_temp_path {shared / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    too_large = (f"The upload is larger than this server accepts ({max_upload_mb} MiB), "
                 "or has too many parts or too large form fields.")
    return f"""\
# Written by `flask --app wsgi serve` (app/web/proxy.py) at every start: edits are lost.
{f"user {user[0]} {user[1]};" if user else "# no user directive: not started as root"}
daemon off;
worker_processes 2;
worker_rlimit_nofile {nofile};
pid {runtime / "nginx.pid"};
error_log stderr error;   # not warn: it logs every upload over 128 KiB

events {{
    worker_connections {max(512, nofile // 2 - 16)};
}}

http {{
    # gunicorn logs each request with the client address nginx passes on.
    access_log off;
    server_tokens off;
{temp}
    client_header_timeout {HEADER_TIMEOUT_S}s;
    client_body_timeout {BODY_TIMEOUT_S}s;
    send_timeout 60s;
    keepalive_timeout 30s;
    # The same limit the app enforces (MAX_UPLOAD_MB); bodies over 128 KiB
    # are buffered in temp files, not memory.
    client_max_body_size {max_upload_mb}m;
    client_body_buffer_size 128k;

    # 413s nginx answers itself, in the app's error shape for API clients.
    map $uri $too_large_page {{
        default  /_layerbench/413.html;
        ~^/api/  /_layerbench/413.json;
        ~^/models/  /_layerbench/413.json;
        ~\\.json$  /_layerbench/413.json;
    }}

    # Every open event stream holds a gunicorn thread for as long as it
    # lasts; past stream_slots they are refused (503; the job page then
    # polls) so that open job pages cannot take every thread.
    map $host $all_streams {{
        default all;
    }}
    limit_conn_zone $all_streams zone=streams:1m;
    limit_conn_status 503;

    upstream gunicorn {{
        server unix:{shared / "gunicorn.sock"};
        # Kept-alive connections let gunicorn read the rest of a body it
        # answered early (a 401, a 413) instead of closing on it, which nginx,
        # still sending, would turn into a 502. nginx must close idle ones
        # before gunicorn does (its --keep-alive, GUNICORN_KEEPALIVE_S),
        # or a request could be sent on a connection gunicorn is closing.
        keepalive 16;
        keepalive_timeout {UPSTREAM_KEEPALIVE_S}s;
    }}

    server {{
        listen {_listen(host, port)};

        # One trusted hop: the client's own X-Forwarded-* headers are replaced,
        # never appended to, so the app sees what nginx saw.
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        # gunicorn believes forwarding headers from its unix socket, so the
        # ones nginx does not set are removed rather than passed on.
        proxy_set_header X-Forwarded-Ssl "";
        proxy_set_header X-Forwarded-Protocol "";
        proxy_set_header X-Forwarded-Host "";
        proxy_set_header Forwarded "";
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_read_timeout {UPSTREAM_READ_TIMEOUT_S}s;
        error_page 413 $too_large_page;

        location / {{
            proxy_pass http://gunicorn;
        }}

        # Server-Sent Events must reach the client as they are written (the
        # route also sends X-Accel-Buffering: no, which any SSE route needs).
        location ~ {EVENTS_ROUTE} {{
            proxy_pass http://gunicorn;
            proxy_buffering off;
            proxy_read_timeout {EVENTS_READ_TIMEOUT_S}s;
            limit_conn streams {stream_slots};
        }}

        location = /_layerbench/413.json {{
            internal;
            default_type application/json;
            return 413 '{{"error": "payload_too_large", "message": "{too_large}", "details": []}}\\n';
        }}

        location = /_layerbench/413.html {{
            internal;
            default_type text/html;
            return 413 '<!doctype html><title>Upload too large</title><h1>Upload too large</h1><p>{too_large}</p>\\n';
        }}
    }}
}}
"""
