"""train.log: capped (first and latest output kept, a marker between), and
what killed a run read from its end. The format itself (app.core.joblog)
first, then the real worker with layers that print a lot."""
from __future__ import annotations

import random
import re
import time
from pathlib import Path

from helpers import NETWORK, PROBE_BASE, SEED_LAYER, post, wait_for

MARKER = re.compile(rb"\n\.\.\. (\d+) bytes dropped \(log capped at \d+ MiB\) \.\.\.\n")


def _lines(rnd: random.Random, start: int, count: int) -> list[bytes]:
    return [f"line {i} ".encode() + b"x" * rnd.randrange(0, 400) + b"\n" for i in range(start, start + count)]


def test_capped_log_keeps_head_and_latest_output_and_maps_offsets(tmp_path):
    from app.core.joblog import CappedLog, read
    path, layout, cap = tmp_path / "train.log", tmp_path / "train.log.layout", 1 << 16
    rnd, stream = random.Random(7), b""
    for run in range(2):   # a resumed job appends to the log of its first run
        log = CappedLog(path, layout, cap)
        for line in _lines(rnd, len(stream), 1500):
            log.write(line)
            stream += line
            assert path.stat().st_size <= cap + len(line) + 100
        log.close()

    text = path.read_bytes()
    (marker,) = list(MARKER.finditer(text))
    head, dropped = marker.start(), int(marker.group(1))
    assert text[:head] == stream[:head] == stream[:cap // 8]
    assert stream.endswith(text[marker.end():])
    assert len(text) - len(marker.group(0)) + dropped == len(stream)

    # Offsets count output bytes: valid across rewrites, the dropped range skipped.
    for offset in [0, 100, head - 10, len(stream) - 5000, len(stream) - 1]:
        data, nxt, size = read(path, layout, offset, 1000)
        assert size == len(stream) and data == stream[offset:nxt] and nxt > offset
    data, nxt, _ = read(path, layout, head + 5, 1000)
    assert data.startswith(marker.group(0)) and stream[:nxt].endswith(data[len(marker.group(0)):])
    offset = 0
    while (chunk := read(path, layout, offset, 4096))[0]:
        offset = chunk[1]
    assert offset == len(stream)


def test_capped_log_never_writes_through_a_planted_link(tmp_path):
    from app.core.joblog import CappedLog
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "train.log").symlink_to(victim)
    log = CappedLog(tmp_path / "train.log", tmp_path / "train.log.layout", 1 << 20)
    log.write(b"output\n")
    log.close()
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "train.log").is_symlink()
    assert (tmp_path / "train.log").read_text() == "output\n"


def test_errors_are_read_from_the_end_of_the_log():
    from app.caffe.glog import python_error_from_log
    from app.worker.outcome import classify
    chatter = "I0101 00:00:00.000000 1 net.cpp:1] Creating Layer loss\n" + "printed\n" * 100_000
    fatal = "F0101 00:00:01.000000 1 blob.cpp:32] Check failed: shape[i] >= 0 (-1 vs. 0)\n"
    status, err = classify(None, 134, False, chatter + "layerbench: nets built, training from iteration 0\n"
                           + fatal + "*** Check failure stack trace: ***\n", 8192)
    assert status == "error" and err["message"] == "Check failed: shape[i] >= 0 (-1 vs. 0)"
    assert err["layer"] is None   # died while training: no layer was being built
    tb = ('Traceback (most recent call last):\n  File "/x/digits_python_layers.py", line 7, in forward\n'
          "    boom()\nValueError: late\n")
    assert python_error_from_log(chatter + tb + "more\n") == {
        "message": "ValueError: late", "traceback": tb.rstrip("\n"), "line": 7}
    status, err = classify(None, 137, False, chatter, 8192)
    assert status == "interrupted" and "killed by signal 9 (SIGKILL)" in err["message"]


# ---- the real worker ------------------------------------------------------------

# Prints SIZE bytes every training iteration (validation runs it too, quietly:
# only training runs get LAYERBENCH_DEVICE); at iteration CRASH, if any, makes
# Caffe fail a CHECK (a negative dimension).
CHATTY = SEED_LAYER + PROBE_BASE + """
    def act(self, bottom):
        print(f"forward {self.n} " + "." * SIZE)
        if self.n == CRASH:
            bottom[0].reshape(-1)
"""


def _chatty(size: int, crash: int | None = None) -> str:
    return CHATTY.replace("SIZE", str(size)).replace("CRASH", str(crash))


def test_chatty_layer_log_stays_under_the_cap_and_ends_with_the_latest_output(app, client, worker):
    worker.procs[0].stop()
    worker.start(LAYERBENCH_LOG_MAX_MB="1")   # the worker reads its settings from its env
    cap = 1 << 20
    job = post(client, "/api/v1/jobs", network=NETWORK, layer=_chatty(100_000), max_iter=40).get_json()
    log = Path(app.config["JOBS_DIR"]) / job["id"] / "train.log"   # beside output/, out of the sandbox's reach
    largest, deadline = 0, time.monotonic() + 120
    while client.get(f"/api/v1/jobs/{job['id']}").get_json()["status"] in ("queued", "running"):
        largest = max(largest, log.stat().st_size if log.exists() else 0)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert wait_for(client, job["id"], {"done"})["iteration"] == 40

    text = log.read_bytes()
    assert largest <= cap + (128 << 10) and len(text) <= cap + (128 << 10)   # ~4 MB were printed
    (marker,) = list(MARKER.finditer(text))
    assert int(marker.group(1)) > 2 * cap
    assert b"forward 1 " in text[:marker.start()]                  # the head: where it began
    tail = text[marker.end():]
    assert re.findall(rb"forward (\d+) ", tail)[-1] == b"40"        # the tail: the latest output
    assert b"snapshot_iter_40.caffemodel" in tail.rsplit(b"forward 40 ", 1)[1]


def test_crash_after_much_output_reports_the_fatal_from_the_end(client, worker):
    # 200 kB per iteration: more than 8 MB before Caffe fails its CHECK.
    job = post(client, "/api/v1/jobs", network=NETWORK, layer=_chatty(200_000, crash=50),
               max_iter=60).get_json()
    ended = wait_for(client, job["id"], {"done", "error", "interrupted"})
    assert ended["status"] == "error"
    assert ended["error"]["message"] == "Check failed: shape[i] >= 0 (-1 vs. 0)"
    assert ended["error"]["stage"] == "caffe" and not ended["error"].get("layer")
    assert "Check failed" in ended["error"]["traceback"]
