"""Privilege separation (issue 22): `flask serve` started as root runs the
web and the job worker as the `layerbench` user; only the launcher stays
root, and it starts nothing but contained runners on paths inside the jobs
directory."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DATA, ROOT, api, initial_token

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation applies when serve runs as root")


def _processes_of(instance: Path) -> dict[int, tuple[int, str]]:
    """pid -> (uid, command line) of every process started for ``instance``."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"LAYERBENCH_INSTANCE_DIR={instance}".encode() not in env:
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            uid = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("Uid:")))
        except (OSError, StopIteration):
            continue
        out[int(pid)] = (uid, cmd)
    return out


def _launcher_socket(procs: dict[int, tuple[int, str]]) -> str:
    cmd = next(c for _, c in procs.values() if "app.services.runtime.launcher" in c)
    return cmd.split("app.services.runtime.launcher ")[1].split()[0]


def _ask(path: str, body: dict, as_uid: int | None = None) -> dict:
    """Send one start request to the launcher (from a child as ``as_uid``)."""
    code = ("import json, os, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            f"s.connect({path!r})\n"
            "r, w = os.pipe()\n"
            f"socket.send_fds(s, [json.dumps({body!r}).encode()], [r, w, w])\n"
            "print(s.recv(1 << 20).decode())\n")
    # Debian's own interpreter (stdlib only): another account may not reach
    # the checkout's venv at all (a clone in a 0700 home directory).
    out = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=60,
                         user=as_uid, group=as_uid and pwd.getpwuid(as_uid).pw_gid)
    if out.returncode:
        return {"failed": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout)


def test_web_and_worker_are_not_root_and_the_launcher_checks_every_spec(server):
    url, instance = server
    procs = _processes_of(instance)
    service = pwd.getpwnam("layerbench").pw_uid
    web = [uid for uid, cmd in procs.values() if "gunicorn" in cmd]
    worker = [uid for uid, cmd in procs.values() if "wsgi worker" in cmd]
    launcher = [uid for uid, cmd in procs.values() if "app.services.runtime.launcher" in cmd]
    assert web and set(web) == {service}, procs
    assert worker and set(worker) == {service}, procs
    assert launcher == [0]
    # The instance is the service user's alone.
    assert os.stat(instance).st_uid == service and os.stat(instance).st_mode & 0o777 == 0o700
    db = instance / "layerbench.sqlite3"
    assert os.stat(db).st_uid == service and os.stat(db).st_mode & 0o077 == 0

    # A contained validation through the web (the launcher starts it).
    token = initial_token(instance)
    report = api(url, token, "POST", "/api/v1/validate",
                 {"network": ("lenet.prototxt", (DATA / "lenet_seed.prototxt").read_bytes()),
                  "python_layer": ("layer.py", (DATA / "seed_accuracy_layer.py").read_bytes()),
                  "dataset": (None, b"sample-digits")})
    assert report["ok"] is True, report

    sock = _launcher_socket(procs)
    jobs = str(instance.parent / "jobs")
    python = next(c for _, c in procs.values() if "app.services.runtime.launcher" in c).split()[0]
    good = {"argv": [python, "-m", "app.contained.probe", jobs + "/x"], "read_only": [], "writable": [jobs],
            "env": {}, "cwd": jobs, "devices": []}
    refused = {
        "a writable path outside the jobs dir": dict(good, writable=["/etc"]),
        "a read-only host path": dict(good, read_only=["/root"]),
        "a path through ..": dict(good, writable=[jobs + "/../.."]),
        "not a contained runner": dict(good, argv=["/bin/sh", "-c", "id"]),
        "a runner outside app.contained": dict(good, argv=[python, "-m", "app.web.cli"]),
        "a device that is not a GPU": dict(good, devices=["/dev/sda"]),
        "an argument outside": dict(good, argv=[python, "-m", "app.contained.probe", "/etc/shadow"]),
    }
    link = Path(jobs) / "link-out"
    link.symlink_to("/etc")
    refused["a link out of the jobs dir"] = dict(good, writable=[str(link)])
    for why, spec in refused.items():
        answer = _ask(sock, {"op": "start", "spec": spec, "limits": {"wall_seconds": 5}})
        assert "refused" in answer.get("error", ""), (why, answer)
    # As the service user, not as root: what the web itself can do.
    answer = _ask(sock, {"op": "start", "spec": refused["a writable path outside the jobs dir"],
                         "limits": {"wall_seconds": 5}}, as_uid=service)
    assert "refused" in answer.get("error", ""), answer
    # Any other account cannot even connect.
    answer = _ask(sock, {"op": "mode"}, as_uid=65534)
    assert "Permission denied" in answer.get("failed", ""), answer


def test_the_sandbox_starts_nothing_as_the_service_user_directly(server):
    """The web's own uid has no way to start a root sandbox: the launcher's
    socket is its only door (no sudo, no setuid helper in the checkout)."""
    _, instance = server
    procs = _processes_of(instance)
    web_pid = next(pid for pid, (_, cmd) in procs.items() if "gunicorn" in cmd)
    status = Path(f"/proc/{web_pid}/status").read_text()
    caps = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    assert int(caps, 16) == 0, status
    assert not [p for p in ROOT.rglob("*") if p.is_file() and p.stat().st_mode & 0o4000]


def test_the_service_user_gets_through_a_0700_home_and_nothing_more(tmp_path):
    """A checkout under /root (0700): one traverse-only ACL entry per closed
    ancestor lets `layerbench` reach the path, never list what is beside it."""
    import tempfile
    from app.web import privsep
    uid, gid = privsep.ensure_user()
    home = Path(tempfile.mkdtemp(prefix="lb-home-", dir="/tmp"))     # 0700, like /root
    try:
        (home / "checkout").mkdir()
        (home / "secret").write_text("s")
        probe = [sys.executable, "-c", f"import os; os.stat({str(home / 'checkout')!r}); "
                 f"print(sorted(os.listdir({str(home)!r})))"]
        before = subprocess.run(probe, user=uid, group=gid, capture_output=True, text=True)
        assert before.returncode != 0 and "Permission denied" in before.stderr
        assert str(home) in privsep.grant_traverse(home / "checkout", uid, gid)[-1]
        after = subprocess.run(probe[:2] + [f"import os; os.stat({str(home / 'checkout')!r})"],
                               user=uid, group=gid, capture_output=True, text=True)
        assert after.returncode == 0, after.stderr
        listing = subprocess.run(probe[:2] + [f"import os; os.listdir({str(home)!r})"],
                                 user=uid, group=gid, capture_output=True, text=True)
        assert listing.returncode != 0, "traverse only: the home directory must not be listable"
        assert privsep.grant_traverse(home / "checkout", uid, gid) == []    # once is enough
    finally:
        shutil.rmtree(home, ignore_errors=True)
