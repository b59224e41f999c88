"""The rule of issue 22: host code reads what a sandbox could have written
only through app.core.untrusted.

An AST walk over app/services, app/worker and app/web finds every call that
opens, reads, copies, archives or sends a file by path. Each one must be in
ALLOWED below with the reason it only ever touches files the host itself
made (or in-memory data); anything new fails here until it goes through
app.core.untrusted or is argued into the list.
"""
from __future__ import annotations

import ast
import re

import pytest

from helpers import ROOT

HOST_PARTS = ("app/services", "app/worker", "app/web")

# Calls by the name they are made with (the callee as written, unparsed).
PATH_CALLS = {"open", "io.open", "os.open", "shutil.copy", "shutil.copy2", "shutil.copyfile",
              "shutil.copytree", "shutil.move", "tarfile.open", "zipfile.ZipFile", "send_file",
              "send_from_directory", "os.fdopen", "json.load"}
# Methods that read by path whatever the receiver is.
READ_METHODS = {"read_text", "read_bytes", "open"}
# .open() on these is an in-memory archive's member, not a path.
MEMBER_OPENERS = {"zf", "self._zip", "zout"}
# .add()/.write() read a path when the receiver is an archive (tar.add(p), zf.write(p)).
ARCHIVE_RECEIVER = re.compile(r"tar|zip|^z$|^zf$|^zout$|^tout$")

# (module, enclosing function, callee as written) -> why it is safe.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("app/services/inference/image_lists.py", "_members", "zipfile.ZipFile"): "an uploaded archive in memory (BytesIO)",
    ("app/services/inference/image_lists.py", "_members", "tarfile.open"): "an uploaded archive in memory (fileobj=BytesIO)",
    ("app/services/layers/files.py", "carry", "zipfile.ZipFile"): "writes a zip into a BytesIO",
    ("app/services/runtime/data_roots.py", "fetch", "tarfile.open"):
        "the gather runner's tar, parsed in memory (fileobj=BytesIO) after untrusted.read_all read it capped",
    ("app/services/runtime/sandbox.py", "__init__", "open"): "the uid lease file under /run (a root-only 0700 dir)",
    ("app/services/jobs/submission.py", "run_validation", "open"):
        "creates sandbox.log in a validation dir the host just made, before the sandbox starts",
    ("app/services/inference/cold.py", "run_sandboxed", "open"):
        "creates the runner's log in a scratch dir the host just made, before the sandbox starts",
    ("app/services/datasets/lifecycle.py", "build", "open"):
        "appends to build.log in the dataset root, which no sandbox can write (only root/build is bound)",
    ("app/services/runtime/cgroups.py", "join", "open"): "cgroup.procs of the host's own cgroup tree",
    ("app/services/runtime/cgroups.py", "_v2", "controllers.read_text"): "the host's cgroup filesystem",
    ("app/services/runtime/cgroups.py", "oom_killed", "(d / name).read_text"): "the host's cgroup filesystem",
    ("app/services/runtime/sandbox_client.py", "start", "os.open"): "/dev/null for a run's unused stdio",
    ("app/services/runtime/sandbox_client.py", "start", "os.fdopen"): "the host's end of a pipe it just made",
    ("app/web/proxy.py", "prepare", "os.open"): "the server's own lock file in its runtime dir",
    ("app/web/auth.py", "ensure_initial_admin", "os.open"): "creates a 0600 file in the instance dir",
    ("app/services/runtime/doorbell.py", "__init__", "os.open"): "the instance's own wake dir as a directory "
        "descriptor (socket names through /proc/self/fd): no sandbox ever sees the instance dir",
    ("app/services/runtime/doorbell.py", "ring", "os.open"): "the same wake dir, to list and ring its sockets",
    ("app/web/auth.py", "ensure_initial_admin", "os.fdopen"): "the descriptor just created above",
    ("app/web/__init__.py", "_instance_secret", "os.open"): "creates the secret key in the instance dir (0600)",
    ("app/web/__init__.py", "_instance_secret", "os.fdopen"): "the descriptor just created above",
    ("app/web/__init__.py", "_instance_secret", "path.read_text"): "the secret key in the instance dir",
    ("app/web/api.py", "download_job", "send_file"): "an open temporary file from job_files.download",
    ("app/web/digits/models.py", "download_model", "send_file"): "an open temporary file from job_files.download",
}


def calls(source: str, module: str):
    """(module, function, callee) for every path-touching call in ``source``."""
    tree = ast.parse(source)
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                callee = ast.unparse(child.func)
                if callee in PATH_CALLS:
                    found.append((module, func, callee))
                elif isinstance(child.func, ast.Attribute):
                    receiver, attr = ast.unparse(child.func.value), child.func.attr
                    if receiver.startswith("untrusted"):
                        pass
                    elif attr in READ_METHODS and receiver not in MEMBER_OPENERS:
                        found.append((module, func, callee))
                    elif attr in ("add", "write") and ARCHIVE_RECEIVER.search(receiver):
                        found.append((module, func, callee))
            visit(child, name)

    visit(tree, "<module>")
    return found


def violations(files: dict[str, str]) -> list[tuple[str, str, str]]:
    """Calls in ``files`` (module path -> source) that are not allowed."""
    out = []
    for module, source in files.items():
        for key in calls(source, module):
            if key not in ALLOWED:
                out.append(key)
    return out


def host_sources() -> dict[str, str]:
    out = {}
    for part in HOST_PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            out[str(path.relative_to(ROOT))] = path.read_text()
    return out


def test_host_code_reads_sandbox_output_only_through_untrusted():
    bad = violations(host_sources())
    assert not bad, ("host code opens/copies/archives files by path outside app.core.untrusted "
                     "(route it through untrusted, or argue it into ALLOWED):\n"
                     + "\n".join(f"  {m}:{f}: {c}(...)" for m, f, c in bad))


def test_every_allowed_entry_is_still_used():
    present = {k for m, s in host_sources().items() for k in calls(s, m)}
    stale = [k for k in ALLOWED if k not in present]
    assert not stale, f"ALLOWED lists calls that no longer exist: {stale}"


@pytest.mark.parametrize("planted", [
    "def f(out):\n    return (out / 'metrics.jsonl').read_text()\n",
    "import shutil\ndef f(src, dest):\n    shutil.copyfile(src, dest)\n",
    "def f(p):\n    with open(p, 'rb') as fh:\n        return fh.read()\n",
    "import tarfile\ndef f(p, dest):\n    with tarfile.open(dest, 'w') as tar:\n        tar.add(p)\n",
    "from flask import send_file\ndef f(p):\n    return send_file(p)\n",
    "import zipfile\ndef f(p, z):\n    z.write(p)\n",
])
def test_the_rule_catches_a_planted_read(planted):
    # The rule loop itself, run on a module that breaks it: it must report.
    sources = dict(host_sources(), **{"app/services/planted.py": planted})
    assert any(m == "app/services/planted.py" for m, _, _ in violations(sources))
