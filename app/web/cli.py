"""Flask CLI commands: ``flask --app wsgi serve`` and friends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from typing import TYPE_CHECKING

import click
from flask import Flask, current_app

from app.web.context import settings

if TYPE_CHECKING:
    from app.web.privsep import Dropped
    from app.web.proxy import Front
    from app.worker.respawn import Respawner


def register(app: Flask) -> None:
    """Attach the CLI commands to ``app``."""
    app.cli.add_command(serve)
    app.cli.add_command(worker)
    app.cli.add_command(selftest_command)
    app.cli.add_command(db_upgrade)
    from app.web.layer_env_cli import layer_env_group
    app.cli.add_command(layer_env_group)
    from app.web import backup_cli
    backup_cli.register(app)      # backup, restore


def _selftest() -> dict:
    """Run the contained self-test for this app and keep its answer."""
    from app.services.operations import selftest
    from app.services.jobs.intake import ready_datasets
    c = current_app.extensions["ctx"]
    result = selftest.run(c.cfg, c.ws, c.containment, ready_datasets(c.store, c.ws))
    selftest.save(current_app.instance_path, result)
    return result


@click.command("db-upgrade")
def db_upgrade() -> None:
    """Bring the database to the newest schema (Alembic; also done at every
    start) and print the revision it is at."""
    store = current_app.extensions["store"]
    store.create_schema()
    click.echo(f"database {store.engine.url.render_as_string(hide_password=True)} "
               f"at revision {store.schema_revision()}")


@click.command("selftest")
def selftest_command() -> None:
    """Validate a tiny net with a Python layer contained, as an upload would; exit 1 on failure."""
    result = _selftest()
    click.echo(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


# gunicorn's default access log line, with the client address nginx passes on
# (behind nginx the peer is the unix socket, which has no address).
FORWARDED_LOG_FORMAT = '%({x-forwarded-for}i)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
POLL_S = 0.2   # how often `serve` looks at its children


def gunicorn_argv(host: str, port: int, workers: int, threads: int, target: str,
                  access_log: bool = True, unix_socket: str | None = None) -> list[str]:
    """The gunicorn command line `serve` uses (bench/ reuses it for baselines).

    With ``unix_socket`` gunicorn listens there, behind nginx, instead of on
    ``host:port``.
    """
    bind = [f"{host}:{port}"]
    if unix_socket:
        from app.web.proxy import GUNICORN_KEEPALIVE_S
        bind = [f"unix:{unix_socket}", "--keep-alive", str(GUNICORN_KEEPALIVE_S)]
    log = ["--access-logfile", "-"] if access_log else []
    if access_log and unix_socket:
        log += ["--access-logformat", FORWARDED_LOG_FORMAT]
    return [sys.executable, "-m", "gunicorn", "--bind", *bind, "--workers", str(workers),
            "--threads", str(threads), "--worker-class", "gthread", "--graceful-timeout", "10",
            # No gunicornc control socket: unused, and it lives in $HOME, which the
            # service user has none of (and two instances would share it).
            "--no-control-socket",
            *log, target]


@click.command("serve")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="$HOST or 127.0.0.1")
@click.option("--port", default=lambda: int(os.environ.get("PORT", "5000")), type=int, show_default="$PORT or 5000")
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes")
@click.option("--threads", default=8, show_default=True, help="threads per gunicorn worker (an SSE stream "
              "holds one; behind nginx at most threads/2 streams are open)")
@click.option("--no-proxy", is_flag=True, help="serve gunicorn directly on HOST:PORT, without nginx in "
              "front: a few dozen slow clients can then hold every thread")
def serve(host: str, port: int, workers: int, threads: int, no_proxy: bool) -> None:
    """Serve the app: nginx on HOST:PORT in front of gunicorn, and the local
    job worker beside them.

    A worker that dies is restarted, and the jobs it was running become
    resumable at once; nginx or gunicorn dying ends `serve`. SIGTERM or
    Ctrl-C stops everything.
    """
    cfg = settings()
    # Event streams each hold a thread, and gunicorn workers take connections
    # unevenly (all streams may land on one): allowing half of one worker's
    # threads leaves every worker half of its own, however they spread.
    front = None if no_proxy else _prepare_front(host, port, stream_slots=max(1, threads // 2))
    web: dict[str, subprocess.Popen] = {}
    jobs_worker = None
    drop = None
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        _report_selftest()
        drop = _drop_privileges(front)
        as_user = drop.popen_args() if drop else {}
        if drop is not None:
            web["sandbox launcher"] = drop.launcher   # without it no job can run: its death ends serve
        if front is None:
            click.echo("WARNING: --no-proxy: gunicorn serves clients directly; slow clients can "
                       "make the service unavailable", err=True)
            web["gunicorn"] = subprocess.Popen(gunicorn_argv(host, port, workers, threads, "wsgi:app"), **as_user)
        else:
            web["gunicorn"] = subprocess.Popen(gunicorn_argv(host, port, workers, threads, "wsgi:app",
                                                             unix_socket=str(front.socket)), **as_user)
            # nginx only once gunicorn listens: earlier, the first requests of
            # a fresh start were answered 502 (no upstream yet).
            _wait_listening(front.socket, web["gunicorn"])
            web["nginx"] = subprocess.Popen(front.argv)
        if cfg.queue == "local" and "worker" in current_app.cli.commands:
            jobs_worker = _local_worker(drop)
            jobs_worker.start()
        click.echo(f"serving on http://{host}:{port}/ (queue: {cfg.queue}, "
                   f"{'no proxy' if front is None else 'behind nginx'})", err=True)
        code = _supervise(web, jobs_worker)
    except KeyboardInterrupt:
        pass
    finally:
        live_worker = jobs_worker.running() if jobs_worker is not None else None
        _stop([*web.values(), *([live_worker] if live_worker else [])])
        if drop is not None:
            drop.close()
        if front is not None:
            front.close()
    sys.exit(code)


def _wait_listening(path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the unix socket at ``path`` accepts connections (gunicorn's master
    listens before its workers have loaded the app; connections wait in the
    backlog until one has). Raises if gunicorn exits first."""
    import socket
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"gunicorn did not start listening on {path}")
        time.sleep(0.02)


def _prepare_front(host: str, port: int, stream_slots: int) -> Front:
    """nginx's config for this instance, or a clear refusal."""
    from app.web import proxy
    nginx = proxy.find_nginx()
    if nginx is None:
        # Refused rather than served without it: a server that says it is up
        # but falls over under a few slow clients is worse than one that says why.
        raise click.ClickException(
            "nginx is not installed; `serve` puts it in front of gunicorn so that slow clients cannot "
            "hold every gunicorn thread. `make run` installs it (scripts/debian-packages.txt), or "
            "`apt-get install nginx-light`; `serve --no-proxy` serves without it.")
    try:
        return proxy.prepare(nginx, current_app.instance_path, host, port,
                             settings().max_upload_mb, stream_slots)
    except proxy.InstanceBusy as exc:
        raise click.ClickException(str(exc)) from None


def _report_selftest() -> None:
    check = _selftest()
    if check["ok"]:
        click.echo(f"self-test: contained validation ok in {check['seconds']} s "
                   f"(containment {check['containment']})", err=True)
    else:
        # Serve anyway: /healthz says ok: false with this reason, and every
        # upload is answered as the server's fault rather than the user's.
        click.echo(f"SELF-TEST FAILED: {check['reason']}", err=True)


def _drop_privileges(front: Front | None) -> Dropped | None:
    """As root: the service user, its directories and the sandbox launcher
    (app.web.privsep); None when `serve` keeps running everything itself."""
    from app.web import privsep
    if not privsep.wanted(settings()):
        if os.geteuid() == 0:
            why = ("LAYERBENCH_PRIVSEP=0" if not settings().privsep
                   else "celery queue: the jobs directory is shared with workers that run as root")
            click.echo(f"WARNING: {why}: the web runs as root", err=True)
        return None
    drop = privsep.prepare(settings())
    if front is not None and front.private is not None:
        # gunicorn (the service user) creates its socket where nginx's workers connect.
        os.chown(front.private, drop.uid, -1)
    click.echo(f"privilege separation: web and worker run as {privsep.SERVICE_USER} (uid {drop.uid}); "
               "a root launcher starts the sandboxes", err=True)
    return drop


def _as_service_user(drop: Dropped | None):
    """A context in which this (root) process writes as the service user, so
    files it creates (SQLite's journal) stay the service user's."""
    import contextlib
    if drop is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def switched():
        os.setegid(drop.gid)
        os.seteuid(drop.uid)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)
    return switched()


def _local_worker(drop: Dropped | None = None) -> Respawner:
    """The `flask --app wsgi worker` child, restarted whenever it dies."""
    from app.worker.respawn import Respawner, describe_exit
    from app.worker.supervisor import recover_dead_worker
    ctx = current_app.extensions["ctx"]

    def died(pid: int, returncode: int, delay: float) -> None:
        how = describe_exit(returncode)
        try:
            with _as_service_user(drop):
                ids = recover_dead_worker(ctx, pid, f"The worker process died ({how}); resume the job "
                                          "to continue from its last snapshot.")
        except Exception as exc:   # the restarted worker's own recovery still runs
            ids = f"not recovered here ({exc})"
        click.echo(f"worker (pid {pid}) {how}; jobs interrupted: {ids}; restarting in {delay:g} s",
                   err=True)

    return Respawner([sys.executable, "-m", "flask", "--app", "wsgi", "worker"], died,
                     popen_args=drop.popen_args() if drop else None)


def _interrupt(signum, _frame):
    # SIGTERM stops `serve` the way Ctrl-C does.
    raise KeyboardInterrupt


def _supervise(web: dict[str, subprocess.Popen], jobs_worker: Respawner | None) -> int:
    """Watch the children until a web process dies (then 1); the worker is
    restarted as often as it dies. Ctrl-C/SIGTERM end it by KeyboardInterrupt."""
    from app.worker.respawn import describe_exit
    while True:
        for name, proc in web.items():
            if proc.poll() is not None:
                click.echo(f"{name} {describe_exit(proc.returncode)}: stopping", err=True)
                return 1
        if jobs_worker is not None:
            jobs_worker.check()
        time.sleep(POLL_S)


def _stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM every live child, then SIGKILL whatever is left after 15 s."""
    for c in children:
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + 15
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()


@click.command("worker")
@click.option("--slots", default=None, type=int, help="jobs at once (default: WORKER_CONCURRENCY, "
              "or one per GPU, else 1)")
def worker(slots: int | None) -> None:
    """Run the local job supervisor until SIGTERM/Ctrl-C."""
    if settings().queue != "local":
        # Its start-up recovery marks every running job interrupted: right for
        # the one local worker, wrong while Celery workers on other hosts train.
        raise click.ClickException("LAYERBENCH_QUEUE is not 'local': start Celery workers with `make worker` "
                                   "(python -m app.worker.celery_app) instead")
    from app.worker.supervisor import for_this_host
    ctx = current_app.extensions["ctx"]
    sup = for_this_host(ctx, slots)
    signal.signal(signal.SIGTERM, lambda *_: sup.stop())
    click.echo(f"worker: {len(sup.alloc.gpus)} GPU(s) {sup.alloc.gpus}, {sup.alloc.cpu_slots} CPU slot(s), "
               f"containment {ctx.containment}", err=True)
    try:
        sup.serve_forever()
    except KeyboardInterrupt:
        sup.stop()
