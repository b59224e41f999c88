"""Prometheus metrics (issue 27, part 3): what ``GET /metrics`` answers.

Two sources, each where it is exact:

* **the store, read at scrape time** (``StoreCollector``): job counts by
  status, finished runs, queue waits (a ``queued`` event to the next
  ``running`` one in each job's history), validation times (each job keeps
  its own), training speed of running jobs, workers, sandboxed runs, free
  disk, GPUs. Nothing to keep in step: every gunicorn process and every
  restart answers the same numbers, and the jobs trained by the worker
  process (or by Celery workers on other hosts) count without any of them
  reporting here.
* **HTTP request durations**, which only the process that served a request
  knows: a ``prometheus_client`` histogram, in its multiprocess mode under
  gunicorn (one directory per gunicorn master under the instance dir; those
  of earlier masters are removed when the first worker of a new one starts).

Counters derived from the store go down when jobs are deleted; Prometheus
takes a drop as a counter reset, so ``rate()`` stays right.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from datetime import datetime
from pathlib import Path

from app.core.status import DatasetStatus, JobStatus
from app.services.runtime import run_counts
from app.services.runtime import workers as workers_svc
from app.services.context import Context

log = logging.getLogger(__name__)

QUEUE_WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
VALIDATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
UNMATCHED_ROUTE = "<unmatched>"     # 404s: never the raw path (unbounded label values)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ENDED = {s.value for s in JobStatus if s.ended}

_state: dict = {"http": None, "dir": None}
_lock = threading.Lock()


# ---- HTTP durations (per process) ---------------------------------------------------

def setup_process(instance_dir: str | Path, multiprocess: bool) -> None:
    """Choose where this process keeps its HTTP histogram, once, before the
    first request: with ``multiprocess`` (a gunicorn worker) in files shared
    by the master's workers (see the module docstring), else in memory."""
    with _lock:
        if _state["http"] is not None:
            return
        from prometheus_client import Histogram, values
        if multiprocess:
            path = _multiprocess_dir(Path(instance_dir))
            # prometheus_client picks its value class when it is imported;
            # the directory is only known now, so the class is set explicitly.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
            values.ValueClass = values.MultiProcessValue()
            _state["dir"] = path
        _state["http"] = Histogram("layerbench_http_request_duration_seconds",
                                   "Time to answer an HTTP request (until the response starts), by URL rule",
                                   ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=None)


def _multiprocess_dir(instance: Path) -> Path:
    # One directory per gunicorn master (this worker's parent): its workers,
    # restarted or not, add up there; a new `serve` starts from zero.
    root = instance / "metrics"
    root.mkdir(mode=0o700, exist_ok=True)
    mine = root / str(os.getppid())
    for old in root.iterdir():
        if old != mine and not (old.name.isdigit() and _alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    mine.mkdir(mode=0o700, exist_ok=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def observe_request(route: str | None, method: str, status: int, seconds: float) -> None:
    """Count one answered request (``route``: the URL rule, None when none matched)."""
    hist = _state["http"]
    if hist is not None:
        # Any token is a method to Werkzeug: unknown ones share one label value,
        # or a client could mint series without end.
        hist.labels(route or UNMATCHED_ROUTE, method if method in HTTP_METHODS else "other",
                    str(status)).observe(seconds)


def exposition(c: Context) -> tuple[bytes, str]:
    """The text exposition of every metric; (body, content type)."""
    # 0.0.4: the text format every Prometheus version reads (generate_latest writes it).
    from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    registry = CollectorRegistry()
    if _state["dir"] is not None:
        here = [MultiProcessCollector(None, path=str(_state["dir"]))]
    else:
        here = [m for m in (_state["http"], run_counts.collector()) if m is not None]
    registry.register(_Merged(here, lambda runs: StoreCollector(c, runs)))
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


def process_runs(families) -> tuple[list, dict[tuple[str, str], float]]:
    """Split this host's process-counted contained runs (run_counts) out of
    ``families``: (the other families, {(kind, outcome): count})."""
    others, runs = [], {}
    for fam in families:
        if fam.name != run_counts.NAME:
            others.append(fam)
            continue
        for s in fam.samples:
            if s.name.endswith("_total"):
                key = (s.labels["kind"], s.labels["outcome"])
                runs[key] = runs.get(key, 0.0) + s.value
    return others, runs


class _Merged:
    """This process's (or gunicorn master's) metrics, except the contained
    runs it counted, which go into the store collector's
    ``layerbench_sandbox_runs_total`` family: one family, two sources."""

    def __init__(self, here: list, store) -> None:
        self.here, self.store = here, store

    def collect(self):
        """Yield the metric families (prometheus_client's collector protocol)."""
        others, runs = process_runs([f for src in self.here for f in src.collect()])
        yield from others
        yield from self.store(runs).collect()


# ---- from the store, at scrape time -------------------------------------------------

def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def history_facts(events: list[dict]) -> dict:
    """What one job's history says: the statuses its runs or waits ended
    in (``finished``), how each sandboxed training run ended (``runs``: the
    next status after each ``running``, ``queued`` meaning handed over) and
    each wait in the queue in seconds (``waits``)."""
    finished, runs, waits = [], [], []
    queued_at, running = None, False
    for e in events:
        status = e["status"]
        if running and status != JobStatus.RUNNING.value:
            runs.append(status)
        running = status == JobStatus.RUNNING.value
        if status == JobStatus.QUEUED.value:
            queued_at = e["at"]
        elif status == JobStatus.RUNNING.value and queued_at:
            waits.append(max(0.0, _seconds(e["at"]) - _seconds(queued_at)))
            queued_at = None
        elif status in _ENDED:
            finished.append(status)
            queued_at = None
    return {"finished": finished, "runs": runs, "waits": waits}


class _Histories:
    """Per process: each job's ``history_facts``, read again only when the
    job's row shows it moved (status, run or times changed), so a scrape
    costs one query per job that changed, not one per job."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[tuple, dict]] = {}
        self.lock = threading.Lock()

    def facts(self, c: Context, jobs: list[dict]) -> list[dict]:
        with self.lock:
            out = []
            for job in jobs:
                key = (job["status"], job.get("run"), job.get("started_at"), job.get("finished_at"))
                hit = self.cache.get(job["id"])
                if hit is None or hit[0] != key:
                    hit = (key, history_facts(c.store.job_events(job["id"])))
                    self.cache[job["id"]] = hit
                out.append(hit[1])
            for gone in set(self.cache) - {j["id"] for j in jobs}:
                del self.cache[gone]
            return out


_histories = _Histories()


def _histogram(name: str, doc: str, values: list[float], buckets: tuple):
    from prometheus_client.core import HistogramMetricFamily
    counts = [(str(float(b)), sum(1 for v in values if v <= b)) for b in buckets]
    return HistogramMetricFamily(name, doc, buckets=[*counts, ("+Inf", len(values))], sum_value=sum(values))


class StoreCollector:
    """A prometheus_client collector of everything the store knows (see the
    module docstring), computed on each ``collect``."""

    def __init__(self, c: Context, process_runs: dict[tuple[str, str], float] | None = None) -> None:
        self.c = c
        self.process_runs = process_runs or {}

    def collect(self):
        """Yield the metric families (prometheus_client's collector protocol)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        c = self.c
        jobs = c.store.list_jobs()
        facts = _histories.facts(c, jobs)

        by_status = GaugeMetricFamily("layerbench_jobs", "Jobs by current status", labels=["status"])
        for s in JobStatus:
            by_status.add_metric([s.value], sum(1 for j in jobs if j["status"] == s.value))
        yield by_status

        finished = CounterMetricFamily("layerbench_jobs_finished", "Times jobs ended, by how (a job resumed "
                                       "after it ended counts again when it ends again)", labels=["status"])
        for s in sorted(_ENDED):
            finished.add_metric([s], sum(f["finished"].count(s) for f in facts))
        yield finished

        yield _histogram("layerbench_queue_wait_seconds", "Time from queued to running, each start of a job",
                         [w for f in facts for w in f["waits"]], QUEUE_WAIT_BUCKETS)
        yield _histogram("layerbench_validation_seconds", "Contained validation time of each submitted job",
                         [float(s) for j in jobs if isinstance(s := (j.get("params") or {})
                                                                .get("validation_seconds"), (int, float))],
                         VALIDATION_BUCKETS)

        speed = GaugeMetricFamily("layerbench_train_iterations_per_second", "Training speed of running jobs",
                                  labels=["job"])
        for j in jobs:
            eta = j.get("eta_seconds")
            if j["status"] == JobStatus.RUNNING.value and eta and eta > 0:
                # The trainer's eta is (max_iter - iteration) / its measured rate.
                speed.add_metric([j["id"]], max(0, int(j["max_iter"]) - int(j["iteration"])) / float(eta))
        yield speed

        yield self._workers(GaugeMetricFamily)
        yield self._sandbox_runs(CounterMetricFamily, jobs, facts)
        try:
            free = shutil.disk_usage(c.ws.root).free
            yield GaugeMetricFamily("layerbench_disk_free_bytes", "Free space on the jobs volume", value=free)
        except OSError as exc:
            log.warning("metrics: cannot read free space of %s: %s", c.ws.root, exc)
        yield from _gpus(GaugeMetricFamily)

    def _workers(self, family):
        live = workers_svc.live(self.c)              # [] in the local queue
        rows = self.c.store.list_workers(alive_since=0)
        out = family("layerbench_workers", "Celery workers by state (live: heart-beating; stale: a row "
                     "whose heartbeat stopped, not yet cleaned up). Always 0 in the local queue",
                     labels=["state"])
        names = {w["name"] for w in live}
        out.add_metric(["live"], len(names))
        out.add_metric(["stale"], sum(1 for w in rows if w["name"] not in names))
        return out

    def _sandbox_runs(self, family, jobs: list[dict], facts: list[dict]):
        out = family("layerbench_sandbox_runs", "Contained runs by runner and outcome (train: how each run "
                     "ended, build_dataset: per upload, both from the store; every other kind counted by the "
                     "web processes that ran it since they started)", labels=["kind", "outcome"])
        counts: dict[tuple[str, str], float] = {}

        def add(kind: str, outcome: str, n: float = 1) -> None:
            counts[(kind, outcome)] = counts.get((kind, outcome), 0) + n
        for f in facts:
            for outcome in f["runs"]:
                add("train", "handed_over" if outcome == JobStatus.QUEUED.value else outcome)
        for (kind, outcome), n in self.process_runs.items():
            # Training runs and builds come from the store (all hosts, exact);
            # a process's own count of them (none on the web) would add twice.
            if kind not in run_counts.KINDS_FROM_STORE:
                add(kind, outcome, n)
        for ds in self.c.store.list_datasets():
            if ds.get("owner") is not None and ds["status"] in (DatasetStatus.DONE.value, DatasetStatus.ERROR.value):
                add("build_dataset", "ok" if ds["status"] == DatasetStatus.DONE.value else "error")
        for (kind, outcome), n in sorted(counts.items()):
            out.add_metric([kind, outcome], n)
        return out


def _gpus(family):
    """This host's GPUs where NVML answers; nothing without a GPU."""
    from app.services.runtime import gpus
    found = gpus.detect()
    if not found:
        return
    host = socket.gethostname()
    util = family("layerbench_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["host", "gpu"])
    used = family("layerbench_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["host", "gpu"])
    total = family("layerbench_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["host", "gpu"])
    for g in found:
        u = gpus.usage(int(g["index"]))
        if u is None:
            continue
        labels = [host, str(g["index"])]
        util.add_metric(labels, u["utilization_percent"] / 100.0)
        used.add_metric(labels, u["memory_used_mb"] * (1 << 20))
        total.add_metric(labels, u["memory_total_mb"] * (1 << 20))
    yield from (util, used, total)


# ---- a Celery worker host's own metrics (app.worker.metrics_port) -------------------

class WorkerCollector:
    """What one Celery worker host knows first-hand, for its own metrics
    port: the contained runs its processes ran (the training worker and its
    side nodes, each writing prometheus_client's multiprocess files under
    ``path``), the training speed of the jobs it runs now, how many it runs,
    and its GPUs where NVML answers. ``where()`` gives (context, node name,
    the set of job ids running here) once the worker has them."""

    def __init__(self, path: str | Path, where) -> None:
        self.path, self.where = str(path), where

    def collect(self):
        """Yield the metric families (prometheus_client's collector protocol)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.multiprocess import MultiProcessCollector
        others, runs = process_runs(MultiProcessCollector(None, path=self.path).collect())
        yield from others
        out = CounterMetricFamily("layerbench_sandbox_runs", "Contained runs on this worker host by runner "
                                  "and outcome, since its worker started (train: the job's final status)",
                                  labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(runs.items()):
            out.add_metric([kind, outcome], n)
        yield out
        c, node, running = self.where()
        yield GaugeMetricFamily("layerbench_worker_running_jobs", "Jobs this worker trains now",
                                value=len(running or ()))
        speed = GaugeMetricFamily("layerbench_train_iterations_per_second", "Training speed of the jobs "
                                  "this worker runs", labels=["job"])
        if c is not None:
            for j in c.store.list_jobs(status=JobStatus.RUNNING.value):
                eta = j.get("eta_seconds")
                if j.get("worker") == node and eta and eta > 0:
                    speed.add_metric([j["id"]], max(0, int(j["max_iter"]) - int(j["iteration"])) / float(eta))
        yield speed
        yield from _gpus(GaugeMetricFamily)
