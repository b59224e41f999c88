"""Errors readable at a glance: what the validation report's error details
get before anyone sees them — the source excerpt of the line they name and,
for the uploaded Python layer file, the Python 2 → 3 hint."""
from __future__ import annotations

from pathlib import Path

from app.core.errors import InvalidRequest, PayloadTooLarge
from app.caffe import excerpts, py2hints
from app.core.workspace import LAYER_FILE, NETWORK_FILE, Workspace

CONVERT_URL = "/api/v1/python-layers/convert"
MAX_FINDINGS = 50


def _read(path: Path) -> str | None:
    try:
        return Workspace.read_capped(path, 4 << 20).decode("utf-8", "replace")
    except OSError:
        return None


def annotate_details(details: list[dict], *, network: tuple[str, str] | None = None,
                     layer_text: str | None = None, helpers: dict[str, str] | None = None) -> None:
    """Add ``excerpt`` (and ``hint`` for a Python 2 idiom in layer code) to
    each detail naming a line. ``network`` is (file name, text) of the
    uploaded prototxt; ``helpers`` the texts of further uploaded .py files."""
    files: dict[tuple[str, str], str] = {}
    if network is not None:
        files[("network", network[0])] = network[1]
    code = dict(helpers or {})
    if layer_text is not None:
        code[LAYER_FILE] = layer_text
    found = {name: py2hints.findings(text) for name, text in code.items()}
    for name, text in code.items():
        files[("python_layer", name)] = text
    for d in details:
        if not isinstance(d, dict) or d.get("field") != "python_layer" or d.get("hint") \
                or d.get("stage") == "upload":
            continue
        name = d.get("file") or LAYER_FILE
        if name in code:
            hint = py2hints.hint_for(d, code[name], found[name])
            if hint:
                d["hint"] = hint
    excerpts.annotate(details, files)


def _helper_texts(details: list[dict], input_dir: Path) -> dict[str, str]:
    """Other uploaded .py files that details name (a helper module beside
    the layer file), read only from inside the input directory."""
    out = {}
    root = input_dir.resolve()
    for d in details:
        name = d.get("file") if isinstance(d, dict) else None
        if not isinstance(name, str) or name == LAYER_FILE or not name.endswith(".py") or name in out:
            continue
        path = (input_dir / name).resolve()
        if path.is_relative_to(root) and path.is_file():
            text = _read(path)
            if text is not None:
                out[name] = text
    return out


def annotate_report(report: dict, input_dir: Path, network_filename: str) -> None:
    """Excerpts and Python 2 hints for a validation report's errors, read
    from the job's inputs; when the layer file has Python 2 idioms, the
    report's ``python2`` lists them and names the conversion route."""
    errors = report.get("errors") or []
    layer_text = _read(input_dir / LAYER_FILE)
    net_text = _read(input_dir / NETWORK_FILE)
    annotate_details(errors, network=(network_filename, net_text) if net_text is not None else None,
                     layer_text=layer_text, helpers=_helper_texts(errors, input_dir))
    found = py2hints.findings(layer_text) if layer_text else []
    if found:
        report["python2"] = {"findings": [f.as_dict() for f in found[:MAX_FINDINGS]],
                             "count": len(found), "convert": CONVERT_URL}


def job_error(c, job: dict) -> dict | None:
    """A job's recorded error (a training-time exception in the layer code)
    with the excerpt of the line it names and any Python 2 hint; the stored
    record is not changed."""
    err = job.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("line"), int) or not err.get("file"):
        return err
    detail = dict(err, field=err.get("field") or ("python_layer" if str(err["file"]).endswith(".py") else "network"))
    input_dir = c.ws.input_dir(job["id"])
    if detail["field"] == "python_layer":
        texts = _helper_texts([detail], input_dir)
        annotate_details([detail], layer_text=_read(input_dir / LAYER_FILE), helpers=texts)
    else:
        net_text = _read(input_dir / NETWORK_FILE)
        annotate_details([detail], network=(detail["file"], net_text) if net_text is not None else None)
    return {**err, **{k: detail[k] for k in ("excerpt", "hint") if k in detail}}


def convert_layer(data: bytes, limit: int) -> str:
    """The mechanically converted Python 3 text of an uploaded Python 2
    layer file (never stored, never run); ServiceError when it is not text."""

    detail = {"field": "python_layer", "file": LAYER_FILE}
    if not data.strip():
        raise InvalidRequest("The Python layer file is missing.",
                           [{**detail, "message": "required"}])
    if len(data) > limit:
        raise PayloadTooLarge(f"The Python layer file is larger than {limit // 1024} KiB.",
                           [{**detail, "message": "too large"}])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The Python layer file is not UTF-8 text.",
                           [{**detail, "message": "not UTF-8"}]) from None
    if "\x00" in text:
        raise InvalidRequest("The Python layer file contains NUL bytes.",
                           [{**detail, "message": "NUL byte"}])
    return py2hints.convert(text)
