"""The per-job disk quota (issue 22, item 9; app.worker.quota): what a job's
output directory takes on disk is measured while it trains, and past
``LAYERBENCH_JOB_DISK_MB`` the run is killed and the job ends interrupted
with "disk quota of N MB reached". Before, nothing bounded what user code
wrote but the 4 GiB per-file limit: enough files filled the jobs volume."""
from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import SEED_LAYER, Workers, post, training_pid, wait_for
from helpers import NETWORK, PROBE_BASE

from app.core import untrusted
from app.worker import quota

MB = 1 << 20
# From its 3rd training iteration on, the layer has written 30 MB of
# incompressible bytes into its working directory (the job's output dir),
# then keeps training slowly: long past any quota check.
FILLER = SEED_LAYER + PROBE_BASE + """
    def act(self, bottom):
        import time
        if self.n == 3:
            with open("filler.bin", "wb") as fh:
                fh.write(_os.urandom(30 << 20))
        time.sleep(0.05)
"""


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_usage_counts_allocated_blocks_and_follows_no_link(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b").mkdir(parents=True)
    (out / "a" / "b" / "data").write_bytes(os.urandom(3 * MB))
    with open(out / "sparse", "wb") as fh:      # 10 GB apparent, one block written
        fh.truncate(10 << 30)
        fh.write(b"x")
    os.link(out / "a" / "b" / "data", out / "hardlink")        # the same blocks: counted once
    big = tmp_path / "elsewhere"
    big.mkdir()
    (big / "host-file").write_bytes(os.urandom(5 * MB))
    (out / "dir-link").symlink_to(big)                          # not followed
    (out / "file-link").symlink_to(big / "host-file")
    fds = _fd_count()
    used = quota.usage(out)
    assert 3 * MB <= used < 4 * MB, used
    assert _fd_count() == fds                                   # every descriptor closed
    # Stopping early: past stop_at, the walk ends and says so.
    assert quota.usage(out, stop_at=MB) > MB
    assert _fd_count() == fds
    assert quota.usage(tmp_path / "missing") == 0


def test_a_wide_tree_is_measured_whole_with_few_descriptors(tmp_path):
    # One descriptor per pending directory would run out long before this
    # tree ends (here: a limit of 128), and whatever lay in the directories
    # not opened would escape the quota.
    import resource
    out = tmp_path / "out"
    for i in range(400):
        (out / f"d{i:03}").mkdir(parents=True)
        (out / f"d{i:03}" / "data").write_bytes(os.urandom(64 << 10))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        used = quota.usage(out)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert used >= 400 * (64 << 10), used


def test_a_tree_too_deep_to_measure_counts_as_over_the_quota(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(untrusted.MAX_DEPTH + 2):      # deeper than a path could name: relative to each parent
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    fds = _fd_count()
    assert quota.usage(out) == quota.UNMEASURABLE
    assert _fd_count() == fds
    watcher = quota.Watcher(out, 10240)
    assert watcher.over() is True and "disk quota of 10240 MB reached" in watcher.error()["message"]


def test_a_job_past_its_disk_quota_is_killed_and_interrupted(app, client):
    workers = Workers(app)
    workers.start(LAYERBENCH_JOB_DISK_MB="10")
    try:
        # No snapshot before the end: the filler alone is past the quota.
        resp = post(client, "/api/v1/jobs", network=NETWORK, layer=FILLER, max_iter=5000, snapshot_interval=500)
        assert resp.status_code == 201, resp.get_json()
        job_id = resp.get_json()["id"]
        out = Path(app.config["JOBS_DIR"]) / job_id / "output"
        pid = training_pid(out, timeout=60)
        t0 = time.monotonic()
        job = wait_for(client, job_id, {"done", "error", "interrupted", "aborted"}, timeout=120)
        assert job["status"] == "interrupted", job
        assert "disk quota of 10 MB reached" in job["error"]["message"], job["error"]
        assert job["iteration"] < 5000 and time.monotonic() - t0 < 60
        # What tripped it: the filler; everything else is far below the quota.
        assert job["snapshots"] == [] and (out / "filler.bin").stat().st_size == 30 * MB
        assert quota.usage(out) - (out / "filler.bin").stat().st_blocks * 512 < 2 * MB
        # The training process is gone (or only a zombie waiting to be reaped).
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        assert state in ("gone", "Z"), state
    finally:
        for w in workers.procs:
            w.stop()
