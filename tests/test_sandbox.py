"""sandbox.py, directly: what contained code can and cannot do (real bwrap)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from app import sandbox
from conftest import _traversable, no_live_sandbox_processes


@pytest.fixture
def box(tmp_path):
    """(run, out): run Python code contained with ``out`` as the writable dir."""
    _traversable(tmp_path)
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
    assert "uid 65534 65534" in log
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
    # A path under /tmp lands in the sandbox's private tmpfs, never on the host.
    assert [line for line in log.splitlines() if line.startswith("WROTE")] == \
        [f"WROTE {tmp_path / 'outside.txt'}"]
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
    assert no_live_sandbox_processes()


def test_daemon_dies_when_the_main_process_exits(box):
    run, inp, out = box
    code = ("import os, time\n"
            "if os.fork() == 0:\n    os.setsid()\n    time.sleep(3)\n"
            "    open('late.txt', 'w').write('still alive')\n    os._exit(0)\n")
    result, log = run(code, wall=20)
    assert result.returncode == 0 and not result.timed_out
    time.sleep(4)
    assert not (out / "late.txt").exists()


def test_fork_bomb_is_bounded(box):
    run, inp, out = box
    result, log = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                      wall=3, processes=64)
    assert result.timed_out
    assert no_live_sandbox_processes()


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
    _traversable(tmp_path)
    code = ("import os, socket\nprint(os.getuid(), sorted(n for _, n in socket.if_nameindex()))\n"
            "s = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 22)); print('connected')\n"
            "except OSError: print('refused')\nprint('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))\n")
    out = tmp_path / "log"
    with open(out, "wb") as log:
        result = sandbox.run(sandbox.Spec([sys.executable, "-c", code]), "unshare",
                             sandbox.Limits(wall_seconds=20), log, log)
    text = out.read_text()
    assert result.returncode == 0, text
    assert "65534 ['lo']" in text and "refused" in text
    assert int(text.split("pids ")[1]) <= 3


def test_uncontained_uploads_are_refused_unless_allowed(tmp_path, sample_datasets):
    from conftest import client_for, make_app, post
    app = make_app(tmp_path, sample_datasets, SANDBOX="none")
    assert app.extensions["containment"] == "none"
    client = client_for(app)
    resp = post(client, "/api/v1/validate")
    assert resp.status_code == 503 and resp.get_json()["error"] == "unavailable"
    assert client.get("/healthz").get_json()["containment"] == "none"
    app.config["ALLOW_UNCONTAINED"] = True
    assert post(client, "/api/v1/validate").get_json()["ok"] is True
