"""A Celery worker host's own Prometheus metrics (issue 27):
``LAYERBENCH_METRICS_PORT`` (0: none) on ``LAYERBENCH_METRICS_ADDRESS``
(loopback by default), plain HTTP ``GET /metrics`` from prometheus_client's
own server.

The web's ``/metrics`` knows the cluster from the store; what only a worker
host knows is here: the contained runs of its processes (training, and the
inference requests and dataset builds its side nodes run), the speed of the
jobs it trains, its GPUs (NVML). Its side nodes are separate processes, so
all of them count in prometheus_client's multiprocess files in one fresh
directory per worker start: the worker sets ``PROMETHEUS_MULTIPROC_DIR``
before it starts them, and they inherit it.

The port is bound before the worker claims its name or takes any job: a
port already taken (a second worker on this host with the same setting)
stops it with a message, rather than running a worker nobody can scrape.
The server has no authentication: keep it on loopback, or on an address
only Prometheus reaches (docs/SCALE_OUT.md).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class PortTaken(Exception):
    """The metrics port cannot be bound (the message says which and why)."""


class MetricsPort:
    """The bound metrics server of this worker and its multiprocess dir."""

    def __init__(self, server, path: Path, address: str, port: int) -> None:
        self.server, self.path, self.address, self.port = server, path, address, port

    def close(self) -> None:
        """Stop serving and remove the multiprocess files."""
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.path, ignore_errors=True)


def open_port(cfg, where) -> MetricsPort | None:
    """Serve this host's metrics when ``METRICS_PORT`` is set (else None);
    ``where``: see app.services.operations.metrics.WorkerCollector. Raises
    PortTaken when the port cannot be bound."""
    port = cfg.metrics_port
    if not port:
        return None
    address = cfg.metrics_address
    path = Path(tempfile.mkdtemp(prefix="layerbench-worker-metrics-"))
    # Before any metric exists in this process, and before the side nodes
    # start (they inherit the variable, and prometheus_client reads it when
    # it is first imported there).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    from prometheus_client import CollectorRegistry, start_http_server, values
    values.ValueClass = values.MultiProcessValue()
    from app.services.operations.metrics import WorkerCollector
    registry = CollectorRegistry()
    registry.register(WorkerCollector(path, where))
    try:
        server, _thread = start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        raise PortTaken(f"LAYERBENCH_METRICS_PORT {port} on {address} cannot be bound ({exc.strerror or exc}): "
                        "another process (another worker on this host?) has it; give each worker its own "
                        "port, or LAYERBENCH_METRICS_PORT=0 for none") from None
    return MetricsPort(server, path, address, port)
