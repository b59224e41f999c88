"""Flask CLI commands: ``flask --app wsgi serve`` and friends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import click
from flask import Flask, current_app


def register(app: Flask) -> None:
    """Attach the CLI commands to ``app``."""
    app.cli.add_command(serve)
    app.cli.add_command(worker)
    app.cli.add_command(selftest_command)


def _selftest() -> dict:
    """Run the contained self-test for this app and keep its answer."""
    from app.services import selftest
    from app.services.jobs import ready_datasets
    c = current_app.extensions["ctx"]
    result = selftest.run(c.cfg, c.ws, c.containment, ready_datasets(c.store, c.ws))
    selftest.save(current_app.instance_path, result)
    return result


@click.command("selftest")
def selftest_command() -> None:
    """Validate a tiny net with a Python layer contained, as an upload would; exit 1 on failure."""
    result = _selftest()
    click.echo(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


def gunicorn_argv(host: str, port: int, workers: int, threads: int, target: str,
                  access_log: bool = True) -> list[str]:
    """The gunicorn command line `serve` uses (bench/ reuses it for baselines)."""
    return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(workers),
            "--threads", str(threads), "--worker-class", "gthread", "--graceful-timeout", "10",
            *(["--access-logfile", "-"] if access_log else []), target]


@click.command("serve")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="$HOST or 127.0.0.1")
@click.option("--port", default=lambda: int(os.environ.get("PORT", "5000")), type=int, show_default="$PORT or 5000")
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes")
@click.option("--threads", default=8, show_default=True, help="threads per gunicorn worker (SSE streams hold one)")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the app with gunicorn and run the local job worker beside it.

    SIGTERM or Ctrl-C stops both.
    """
    cfg = current_app.config
    check = _selftest()
    if check["ok"]:
        click.echo(f"self-test: contained validation ok in {check['seconds']} s "
                   f"(containment {check['containment']})", err=True)
    else:
        # Serve anyway: /healthz says ok: false with this reason, and every
        # upload is answered as the server's fault rather than the user's.
        click.echo(f"SELF-TEST FAILED: {check['reason']}", err=True)
    children: list[subprocess.Popen] = []
    web = subprocess.Popen(gunicorn_argv(host, port, workers, threads, "wsgi:app"))
    children.append(web)
    if cfg["QUEUE"] == "local" and "worker" in current_app.cli.commands:
        children.append(subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "worker"]))
    click.echo(f"serving on http://{host}:{port}/ (queue: {cfg['QUEUE']})", err=True)

    def _stop(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for c in children:
            if c.poll() is None:
                c.terminate()
        deadline = time.monotonic() + 15
        for c in children:
            try:
                c.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
    codes = [c.returncode for c in children]
    sys.exit(0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1)


@click.command("worker")
@click.option("--slots", default=None, type=int, help="jobs at once (default: WORKER_CONCURRENCY, "
              "or one per GPU, else 1)")
def worker(slots: int | None) -> None:
    """Run the local job supervisor until SIGTERM/Ctrl-C."""
    from app.services import gpus
    from app.worker.supervisor import LocalSupervisor
    from app.services.caffe_info import caffe_info
    ctx = current_app.extensions["ctx"]
    found = [g["index"] for g in gpus.detect()] if caffe_info(current_app.config["CAFFE_PYTHON"]).get("gpu_build") else []
    n = slots or int(current_app.config["WORKER_CONCURRENCY"]) or 1
    sup = LocalSupervisor(ctx, cpu_slots=n, gpu_indices=found)
    signal.signal(signal.SIGTERM, lambda *_: sup.stopping.set())
    click.echo(f"worker: {len(found)} GPU(s) {found}, {n} CPU slot(s), containment {ctx.containment}", err=True)
    try:
        sup.serve_forever()
    except KeyboardInterrupt:
        sup.stopping.set()
