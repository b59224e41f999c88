"""The celery queue, sending side: what the web (and every worker) uses to
put a job or a dataset build on the Redis broker.

Messages are a doorbell, never the truth: the store says what is queued, and
``Store.claim_job``'s compare-and-set decides who runs it, so a message
delivered twice, late, or to a worker that cannot use it changes nothing. A
message can also be lost (Redis restarted without persistence, the web killed
between the insert and the send): ``redispatch`` sends again for every queued
job whose "sent" mark is missing, and the mark lives in the same Redis as the
message, so both vanish together. In the ``local`` queue everything here is a
no-op (the local supervisor polls the store).
"""
from __future__ import annotations

import logging
import threading

from app.core.status import DatasetStatus, JobStatus
from app.services.context import Context
from app.services.runtime import doorbell
from app.core.config import Settings

log = logging.getLogger(__name__)

TASK_JOB = "layerbench.run_job"
TASK_DATASET = "layerbench.build_dataset"
DATASET_QUEUE = "datasets"
SENT_KEY = "layerbench:sent:{kind}:{id}:{gen}"
SENT_TTL_S = 7 * 24 * 3600
_clients: dict[str, object] = {}
_lock = threading.Lock()


def celery_mode(cfg: Settings) -> bool:
    """Whether jobs go through Celery (``LAYERBENCH_QUEUE=celery``)."""
    return cfg.queue == "celery"


def job_queue(device: str) -> str:
    """The Celery queue of a job asking for ``device``: ``cpu``, ``gpu``,
    ``auto`` or ``gpu.N``. A worker consumes the queues of what it offers
    (app.worker.celery_app.queues_for), so ``gpu:N`` runs on a host that has
    a GPU N, ``auto`` on any worker (its first free GPU, else the CPU)."""
    if device.startswith("gpu:"):
        return f"gpu.{int(device[4:])}"
    return device if device in ("cpu", "gpu") else "auto"


def settings(cfg: Settings) -> dict:
    """Celery settings shared by the web (sending) and the workers. Each
    one is here because a training task runs for hours on a GPU."""
    return {
        "broker_url": cfg.broker_url,
        # Acknowledge a job's message when its task ends, not when it starts:
        # a worker that dies mid-run leaves the message unacknowledged, so
        # Redis gives it to another worker (a second line behind the
        # heartbeat hand-over, which does not wait for this).
        "task_acks_late": True,
        # ... and a task whose worker process was killed is requeued rather
        # than acknowledged as failed.
        "task_reject_on_worker_lost": True,
        # One message reserved per free slot: a worker busy for hours must not
        # sit on queued jobs another worker could start now.
        "worker_prefetch_multiplier": 1,
        # Redis re-delivers an unacknowledged message after this long even if
        # its task is still running. That can never start a second run (the
        # claim is a compare-and-set on the job's status and the duplicate
        # finds it running), so a day only bounds how long the message of a
        # dead worker could wait if the heartbeat hand-over did not exist.
        "broker_transport_options": {"visibility_timeout": 24 * 3600},
        # The store holds every result and state; Celery keeps none.
        "task_ignore_result": True,
        "result_backend": None,
        # Messages are JSON (a job id): no pickle from the broker.
        "task_serializer": "json", "accept_content": ["json"],
        # Keep trying a broker that restarts instead of giving up.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Messages sent without a queue (none are) would go where any worker looks.
        "task_default_queue": "auto",
        "worker_hijack_root_logger": False,
        # Ready workers tell each other nothing: liveness is in the store.
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
    }


def client(cfg):
    """The Celery app used to send (one per broker URL per process)."""
    url = cfg.broker_url
    with _lock:
        if url not in _clients:
            from celery import Celery
            app = Celery("layerbench", set_as_current=False)
            app.conf.update(settings(cfg))
            _clients[url] = app
        return _clients[url]


def redis_client(cfg, read_timeout: float = 5):
    """A Redis client on the broker (the "sent" marks, inference replies);
    ``read_timeout`` must outlast any blocking command sent on it."""
    import redis
    return redis.Redis.from_url(cfg.broker_url, socket_timeout=read_timeout, socket_connect_timeout=5)


def _send(cfg, kind: str, ident: str, gen: int, name: str, queue: str) -> bool:
    """Send one message unless this queuing of ``ident`` was sent already."""
    key = SENT_KEY.format(kind=kind, id=ident, gen=gen)
    if not redis_client(cfg).set(key, "1", nx=True, ex=SENT_TTL_S):
        return False
    try:
        client(cfg).send_task(name, args=[ident], queue=queue)
    except Exception:
        redis_client(cfg).delete(key)   # not sent: the next redispatch tries again
        raise
    return True


def enqueue_job(c: Context, job: dict) -> None:
    """Ring the queue for a job that is now ``queued`` (after submit, resume
    or a hand-over). A broker that is down is not the submitter's failure:
    the job is queued in the store and ``redispatch`` sends it later. In
    the local queue: the local workers' doorbell (app.services.runtime.doorbell)."""
    if not celery_mode(c.cfg):
        doorbell.ring(c.cfg)
        return
    device = str((job.get("params") or {}).get("device") or "auto")
    try:
        _send(c.cfg, "job", job["id"], int(job.get("run") or 0), TASK_JOB, job_queue(device))
    except Exception as exc:   # the store has it queued: redispatch sends it once the broker is back
        log.warning("could not send job %s to the broker (%r); it will be sent again", job["id"], exc)


def build_generation(ds: dict | None) -> int:
    """Which queuing of a dataset build this is: 0, then one more per
    hand-over of a build whose worker died (the dataset's ``handovers``,
    written by app.worker.heartbeat in the same fenced UPDATE as the
    hand-over, so it never goes back and a generation is never reused)."""
    return len((ds or {}).get("handovers") or [])


def enqueue_dataset(c: Context, ds_id: str) -> None:
    """Ring the queue for a dataset build now ``queued`` (local queue: the doorbell)."""
    if not celery_mode(c.cfg):
        doorbell.ring(c.cfg)
        return
    try:
        _send(c.cfg, "dataset", ds_id, build_generation(c.store.get_dataset(ds_id)), TASK_DATASET, DATASET_QUEUE)
    except Exception as exc:   # queued in the store: redispatch sends it once the broker is back
        log.warning("could not send dataset build %s to the broker (%r); it will be sent again", ds_id, exc)


def redispatch(c: Context) -> list[str]:
    """Send again for every queued job and dataset whose message was lost
    (see the module's docstring); returns the ids sent."""
    sent = []
    for job in c.store.list_jobs(status=JobStatus.QUEUED.value):
        if job.get("abort_requested"):
            continue
        device = str((job.get("params") or {}).get("device") or "auto")
        if _send(c.cfg, "job", job["id"], int(job.get("run") or 0), TASK_JOB, job_queue(device)):
            sent.append(job["id"])
    for ds in c.store.list_datasets(status=DatasetStatus.QUEUED.value):
        if _send(c.cfg, "dataset", ds["id"], build_generation(ds), TASK_DATASET, DATASET_QUEUE):
            sent.append(ds["id"])
    return sent
