"""sandbox.py, directly: what contained code can and cannot do (real bwrap)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from app.services.runtime import sandbox
from helpers import no_live_sandbox_processes


@pytest.fixture
def box(tmp_path):
    """(run, out): run Python code contained with ``out`` as the writable dir."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    (inp / "data.txt").write_text("input")

    def run(code: str, wall: float = 20, **limits) -> tuple[sandbox.Result, str]:
        spec = sandbox.Spec([sys.executable, "-c", code], read_only=[inp], writable=[out], cwd=out)
        log = open(tmp_path / "log.txt", "wb")
        try:
            result = sandbox.run(spec, "bwrap", sandbox.Limits(wall_seconds=wall, **limits), log, log)
        finally:
            log.close()
        return result, (tmp_path / "log.txt").read_text(errors="replace")
    return run, inp, out


def test_mode_is_bwrap_here():
    assert sandbox.mode("auto") == "bwrap"


def test_unprivileged_no_network_private_tmp(box, tmp_path):
    run, inp, out = box
    result, log = run(
        "import os, socket\n"
        "print('uid', os.getuid(), os.geteuid())\n"
        "print('ifs', sorted(n for _, n in socket.if_nameindex()))\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('127.0.0.1', 22)); print('connected')\nexcept OSError as e: print('refused', e.errno)\n"
        "try:\n    socket.getaddrinfo('pypi.org', 443); print('dns ok')\nexcept OSError: print('no dns')\n"
        "open('/tmp/x', 'w').write('private')\n"
        "print('env', sorted(os.environ))\n")
    assert result.returncode == 0, log
    uid_line = next(line for line in log.splitlines() if line.startswith("uid"))
    _, real, effective = uid_line.split()
    assert real == effective and int(real) in sandbox.uid_range()
    assert "ifs ['lo']" in log and "connected" not in log and "no dns" in log
    assert not Path("/tmp/x").exists() or Path("/tmp/x").read_text() != "private"
    env_line = next(line for line in log.splitlines() if line.startswith("env"))
    assert "LAYERBENCH" not in env_line.replace("LAYERBENCH_DEVICE", "") and "SECRET" not in env_line


def test_reads_and_writes_are_confined(box, tmp_path, app):
    run, inp, out = box
    db = app.config["DATABASE_URL"].removeprefix("sqlite:///")
    targets = ["/etc/shadow", "/etc/passwd", db, str(Path(app.instance_path) / "secret_key"),
               "/root/.bashrc", str(Path(__file__))]
    code = ("import os\nfor p in %r:\n"
            "    try:\n        open(p).read(1); print('READ', p)\n    except OSError: pass\n"
            "for p in [%r + '/new', '/usr/x', %r, '/etc/x']:\n"
            "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n    except OSError: pass\n"
            "open('ok.txt', 'w').write('fine')\n" % (targets, str(inp), str(tmp_path / "outside.txt")))
    result, log = run(code)
    assert result.returncode == 0, log
    assert "READ" not in log
    # The job's parent directories exist inside only as read-only mount points
    # (and /tmp is a private tmpfs): nothing lands beside the job on the host.
    assert [line for line in log.splitlines() if line.startswith("WROTE")] == []
    assert (out / "ok.txt").read_text() == "fine"
    assert not (tmp_path / "outside.txt").exists() and not (inp / "new").exists()


def test_wall_clock_kills_everything_including_daemons(box, tmp_path):
    run, inp, out = box
    marker = f"layerbench-daemon-{os.getpid()}-{time.monotonic_ns()}"
    code = ("import os, time, sys\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        sys.argv[0] = '{marker}'\n        while True: time.sleep(0.1)\n    os._exit(0)\n"
            "while True: pass\n")
    t0 = time.monotonic()
    result, log = run(code, wall=2)
    assert result.timed_out and time.monotonic() - t0 < 10
    assert no_live_sandbox_processes(tmp_path)


def test_daemon_dies_when_the_main_process_exits(box):
    run, inp, out = box
    code = ("import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    time.sleep(3)\n"
            "    open('late.txt', 'w').write('still alive')\n    os._exit(0)\n")
    result, log = run(code, wall=20)
    assert result.returncode == 0 and not result.timed_out
    # The positive signal: nothing of that run is left to write later.
    assert result.uid is not None and _count_processes(result.uid) == 0
    assert not (out / "late.txt").exists()


def test_fork_bomb_is_bounded(box, tmp_path):
    run, inp, out = box
    result, log = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                      wall=2, processes=64)   # it burns every core until then
    assert result.timed_out
    assert no_live_sandbox_processes(tmp_path)


def test_memory_limit(box):
    run, inp, out = box
    result, log = run("b = bytearray(3 << 30)\n", address_space=1 << 30)
    assert result.returncode != 0 and "MemoryError" in log


def test_kill_minus_one_stays_inside(box):
    run, inp, out = box
    # In its own pid namespace there is nobody else to kill: ESRCH, and the
    # host's processes (this test among them) never see the signal.
    result, log = run("import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n"
                      "except ProcessLookupError:\n    print('nobody to kill')\nprint('survived')\n")
    assert os.getpid() > 0 and Path("/proc/1").exists()   # we are still here
    assert result.returncode == 0 and "nobody to kill" in log and "survived" in log


def test_file_size_limit(box):
    run, inp, out = box
    result, log = run("open('big', 'wb').write(b'x' * (2 << 20))\n", file_size=1 << 20)
    assert result.returncode != 0
    assert (out / "big").stat().st_size <= 1 << 20


def test_unshare_fallback_still_blocks_network_and_drops_privileges(tmp_path):
    # The fallback where bubblewrap cannot run: no filesystem view, but its
    # own network and pid namespaces and an unprivileged uid.
    code = ("import os, socket\nprint(os.getuid(), sorted(n for _, n in socket.if_nameindex()))\n"
            "s = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 22)); print('connected')\n"
            "except OSError: print('refused')\nprint('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))\n")
    out = tmp_path / "log"
    with open(out, "wb") as log:
        result = sandbox.run(sandbox.Spec([sys.executable, "-c", code]), "unshare",
                             sandbox.Limits(wall_seconds=20), log, log)
    text = out.read_text()
    assert result.returncode == 0, text
    uid, ifs = text.split(" ", 1)
    assert int(uid) in sandbox.uid_range() and ifs.startswith("['lo']") and "refused" in text
    assert int(text.split("pids ")[1]) <= 3


def test_uncontained_uploads_are_refused_unless_allowed(tmp_path, sample_datasets):
    from helpers import change_settings, client_for, make_app, post
    app = make_app(tmp_path, sample_datasets, SANDBOX="none")
    assert app.extensions["containment"] == "none"
    client = client_for(app)
    resp = post(client, "/api/v1/validate")
    assert resp.status_code == 503 and resp.get_json()["error"] == "unavailable"
    assert client.get("/healthz").get_json()["containment"] == "none"
    change_settings(app, ALLOW_UNCONTAINED=True)
    assert post(client, "/api/v1/validate").get_json()["ok"] is True


def test_paths_under_a_0700_directory_are_reachable(tmp_path):
    # A checkout in root's home (mode 0700): bwrap must bind what lies
    # beneath, and the unprivileged uid must reach it inside.
    home = tmp_path / "home"
    (home / "project" / "in").mkdir(parents=True)
    home.chmod(0o700)
    (home / "project").chmod(0o700)
    (home / "project" / "in" / "data.txt").write_text("behind a locked door")
    out = home / "project" / "out"
    out.mkdir()
    code = "print(open(%r).read()); open('written', 'w').write('ok')" % str(home / "project" / "in" / "data.txt")
    spec = sandbox.Spec([sys.executable, "-c", code], read_only=[home / "project" / "in"], writable=[out], cwd=out)
    with open(tmp_path / "log", "wb") as log:
        result = sandbox.run(spec, "bwrap", sandbox.Limits(wall_seconds=20), log, log)
    text = (tmp_path / "log").read_text()
    assert result.returncode == 0, text
    assert "behind a locked door" in text and (out / "written").read_text() == "ok"
    # The parents stay locked on the host.
    assert home.stat().st_mode & 0o777 == 0o700


def test_self_test_binds_the_real_venv_and_app():
    assert sandbox._self_test_bwrap() == ""


def test_each_run_has_its_own_uid(box, tmp_path):
    inp = tmp_path / "in"
    code = "import os, time; open('/tmp/x','w'); time.sleep(1.5); print('uid', os.getuid())"
    logs = [open(tmp_path / f"l{i}", "wb") for i in range(3)]
    procs = [sandbox.start(sandbox.Spec([sys.executable, "-c", code], read_only=[inp]), "bwrap",
                           sandbox.Limits(wall_seconds=20), log, log) for log in logs]
    uids = {p.sandbox_uid for p in procs}
    for p in procs:
        assert sandbox.wait(p, sandbox.Limits(wall_seconds=20), time.monotonic()).returncode == 0
    for log in logs:
        log.close()
    seen = {(tmp_path / f"l{i}").read_text().split()[-1] for i in range(3)}
    assert len(uids) == 3 and {str(u) for u in uids} == seen
    # Leases are given back when a run ends.
    assert all(p.sandbox_lease._fh is None for p in procs)


def test_a_fork_bomb_does_not_starve_another_run(box, tmp_path):
    # RLIMIT_NPROC counts per uid: with one shared uid, a bomb at its limit
    # made every other tenant's sandbox fail to start.
    run, inp, out = box
    bomb = ("import os, time\nwhile True:\n    try:\n        os.fork()\n"
            "    except OSError:\n        time.sleep(0.01)\n")
    limits = sandbox.Limits(wall_seconds=15, processes=64)
    log = open(tmp_path / "bomb.log", "wb")
    proc = sandbox.start(sandbox.Spec([sys.executable, "-c", bomb]), "bwrap", limits, log, log)
    try:
        deadline = time.monotonic() + 10
        while _count_processes(proc.sandbox_uid) < 60:   # the bomb is at its limit
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        result, text = run("import os; print('fine', os.getuid())", wall=20, processes=64)
        assert result.returncode == 0 and "fine" in text, text
        assert int(text.split()[-1]) != proc.sandbox_uid
    finally:
        sandbox.kill(proc)
        log.close()
    assert no_live_sandbox_processes(tmp_path)


def _count_processes(uid: int) -> int:
    import subprocess
    out = subprocess.run(["ps", "-u", str(uid), "-o", "pid="], capture_output=True, text=True).stdout
    return len(out.split())


@pytest.mark.skipif(not __import__("app.services.runtime.cgroups", fromlist=["x"]).available(),
                    reason="this host gives no writable cgroups")
def test_each_run_has_its_own_cgroup_with_pids_and_memory_limits(box, tmp_path):
    # The whole run is bounded, not each process: two processes of 200 MB
    # each exceed a 300 MB run (their address-space limits allow both).
    run, inp, out = box
    import subprocess
    limits = sandbox.Limits(wall_seconds=20, processes=64)
    proc = sandbox.start(sandbox.Spec([sys.executable, "-c", "import time; time.sleep(30)"]), "bwrap",
                         limits, subprocess.DEVNULL, subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while _count_processes(proc.sandbox_uid) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pid = subprocess.run(["ps", "-u", str(proc.sandbox_uid), "-o", "pid="], capture_output=True,
                             text=True).stdout.split()[0]
        # Seen from the host (inside, its own cgroup namespace shows "/").
        groups = Path(f"/proc/{pid}/cgroup").read_text()
        assert f"pids:/layerbench/run-{proc.sandbox_uid}-" in groups, groups
        assert f"memory:/layerbench/run-{proc.sandbox_uid}-" in groups, groups
    finally:
        sandbox.kill(proc)
    code = ("import os, time\n"
            "pid = os.fork()\n"
            "block = b'x' * (200 << 20)\n"     # touched, not just reserved
            "time.sleep(3)\n"
            "os.waitpid(pid, 0) if pid else None\n")
    result, log = run(code, wall=20, address_space=1 << 30, memory_bytes=300 << 20)
    assert result.oom_killed, log   # the kernel killed one of the two for the run's limit
    from app.services.runtime import cgroups
    assert not [d for r in (cgroups.ROOT / "pids" / cgroups.GROUP, cgroups.ROOT / "memory" / cgroups.GROUP)
                if r.is_dir() for d in r.glob(f"run-{result.uid}-*")], "the run's groups are removed"
