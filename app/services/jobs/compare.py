"""Side-by-side comparison of jobs: their curves on common axes (epoch,
iteration, wall time), their settings with the differences marked, unified
diffs of their network and layer file against the first job, and their final
metrics. What `/jobs/compare` and `/api/v1/jobs/compare` show.

Every job is fetched through ``jobs.get``: a job the user may not see is
not_found, exactly as if it did not exist."""
from __future__ import annotations

import bisect
import difflib
import re

from app.core.errors import InvalidRequest
from app.core.workspace import LAYER_FILE, NETWORK_FILE, SOLVER_FILE, Workspace
from app.services.jobs import files as job_files
from app.services.jobs import lifecycle as jobs
from app.services.context import Context

MAX_JOBS = 32            # a whole sweep (app.services.jobs.sweeps.MAX_JOBS) fits
MAX_POINTS = 1500            # per series: longer ones are thinned evenly (last point kept)
MAX_DIFF_LINES = 2000
# Job parameters shown as settings (in this order), then the solver's own lines.
PARAMS = ("learning_rate", "solver_type", "lr_policy", "gamma", "power", "stepsize", "stepvalues",
          "momentum", "weight_decay", "batch_size", "iter_size", "train_epochs", "max_iter",
          "val_interval", "snapshot_interval", "random_seed", "shuffle", "use_mean", "crop_size",
          "device", "network_filename", "pretrained_model", "previous_job")
# Solver lines that differ between any two jobs for no reason of theirs.
_SOLVER_SKIP = ("net", "snapshot_prefix", "train_net", "test_net")


def parse_ids(raw: str | list[str] | None) -> list[str]:
    """Job ids from ``a,b,c`` (or repeated values), in order, duplicates
    dropped; 1 to MAX_JOBS of them, else invalid_request."""
    parts = raw if isinstance(raw, list) else [raw or ""]
    ids = list(dict.fromkeys(i for p in parts for i in (x.strip() for x in str(p).split(",")) if i))
    if not ids or len(ids) > MAX_JOBS or any(len(i) > 40 for i in ids):
        raise InvalidRequest(f"Name 1 to {MAX_JOBS} jobs to compare.",
                           [{"field": "ids", "message": f"comma-separated job ids, at most {MAX_JOBS}"}])
    return ids


def _read(path) -> str | None:
    try:
        return Workspace.read_capped(path, 4 << 20).decode("utf-8", "replace")
    except OSError:
        return None


def _clock(records: list[dict]):
    """A function iteration -> wall seconds since the first timed iteration
    (linear between the runner's clock records); None without any."""
    points = sorted((r["iteration"], r["time"]) for r in records
                    if isinstance(r.get("iteration"), (int, float)) and isinstance(r.get("time"), (int, float)))
    if not points:
        return None
    its = [p[0] for p in points]
    t0 = points[0][1]

    def at(it: float) -> float:
        k = bisect.bisect_left(its, it)
        if k <= 0:
            return 0.0
        if k >= len(points):
            return round(points[-1][1] - t0, 3)
        (i0, a), (i1, b) = points[k - 1], points[k]
        return round(a + (b - a) * (it - i0) / (i1 - i0) - t0 if i1 != i0 else b - t0, 3)
    return at


def _thin(points: list[dict]) -> list[dict]:
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / MAX_POINTS
    kept = [points[int(k * step)] for k in range(MAX_POINTS - 1)]
    return kept + [points[-1]]


def _series(c: Context, job: dict) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Every curve of the job by name ("train loss", "val accuracy", "lr"):
    points {iteration, epoch, wall_seconds, value}; and the final values."""
    recs = job_files.metrics(c, job, ("train", "val", "lr", "clock"))
    clock = _clock(recs["clock"])
    out: dict[str, list[dict]] = {}
    for kind in ("train", "val", "lr"):
        for rec in recs[kind]:
            it = rec.get("iteration")
            for key, value in rec.items():
                if key in ("iteration", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                name = "lr" if kind == "lr" else f"{kind} {key}"
                out.setdefault(name, []).append({
                    "iteration": it, "epoch": rec.get("epoch"), "value": value,
                    "wall_seconds": clock(it) if clock and isinstance(it, (int, float)) else None})
    final = {name: points[-1]["value"] for name, points in out.items()}
    return {name: _thin(points) for name, points in out.items()}, final


def _solver_lines(text: str | None) -> dict[str, str]:
    """Top-level `key: value` lines of a solver prototxt (repeated keys joined)."""
    out: dict[str, str] = {}
    depth = 0
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if depth == 0:
            m = re.match(r"^(\w+)\s*:\s*(.+)$", line)
            if m and m.group(1) not in _SOLVER_SKIP:
                key = f"solver.{m.group(1)}"
                out[key] = f"{out[key]}, {m.group(2)}" if key in out else m.group(2)
        depth += line.count("{") - line.count("}")
    return out


def _settings(c: Context, picked: list[dict]) -> list[dict]:
    """Rows {name, values (one per job), differs}: parameters first, then
    the generated solver's lines; rows no job has are left out."""
    per_job = []
    for job in picked:
        params = job.get("params") or {}
        row = {"dataset": job.get("dataset"),
               "python_layer": ", ".join((job.get("python_layer") or {}).get("classes") or []) or None}
        row.update({k: params.get(k) for k in PARAMS})
        group = params.get("group")
        row["group"] = group.get("name") if isinstance(group, dict) else group
        row.update(_solver_lines(_read(c.ws.input_dir(job["id"]) / SOLVER_FILE)))
        per_job.append(row)
    names = list(dict.fromkeys(k for row in per_job for k in row))
    rows = []
    for name in names:
        values = [row.get(name) for row in per_job]
        if all(v is None or v == "" for v in values):
            continue
        rows.append({"name": name, "values": values, "differs": len({repr(v) for v in values}) > 1})
    return rows


def _diffs(c: Context, picked: list[dict], filename: str, label: str) -> list[dict]:
    """Each job's file as a unified diff against the first job's:
    {job, diff, same, missing}."""
    texts = [_read(c.ws.input_dir(j["id"]) / filename) for j in picked]
    base = texts[0]
    out = []
    for job, text in zip(picked, texts):
        if job is picked[0]:
            continue
        lines = list(difflib.unified_diff((base or "").splitlines(), (text or "").splitlines(),
                                          f"{picked[0]['name']}/{label}", f"{job['name']}/{label}", lineterm=""))
        cut = len(lines) > MAX_DIFF_LINES
        out.append({"job": job["id"], "same": base == text, "missing": text is None,
                    "diff": "\n".join(lines[:MAX_DIFF_LINES]) + ("\n… (diff cut)" if cut else "")})
    return out


def compare(c: Context, ids: list[str], user: dict) -> dict:
    """The comparison of API.md's `GET /api/v1/jobs/compare` for ``ids``
    (in that order; the first is the baseline of the diffs)."""
    picked = [jobs.get(c, job_id, user) for job_id in ids]   # not_found for any the user may not see
    entries, metric_names = [], []
    for job in picked:
        series, final = _series(c, job)
        metric_names += [n for n in series if n not in metric_names]
        entries.append({"id": job["id"], "name": job["name"], "owner": job.get("owner"),
                        "status": job["status"], "created_at": job.get("created_at"),
                        "iteration": job.get("iteration"), "max_iter": job.get("max_iter"),
                        "links": {"page": f"/jobs/{job['id']}", "self": f"/api/v1/jobs/{job['id']}"},
                        "final": final, "series": series})
    return {"jobs": entries, "metrics": metric_names, "axes": ["epoch", "iteration", "wall_seconds"],
            "settings": _settings(c, picked),
            "diffs": {"network": _diffs(c, picked, NETWORK_FILE, "network.prototxt"),
                      "python_layer": _diffs(c, picked, LAYER_FILE, LAYER_FILE)},
            "link": "/jobs/compare?ids=" + ",".join(j["id"] for j in picked)}
