"""The layout's import rules, enforced (docs/ARCHITECTURE.md draws them).

Each part of ``app/`` may import only the parts below it; sandboxed runners
never load Flask or the store; views never import the store.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

APP = ROOT / "app"
WEB_FRAMEWORK = ("flask", "flask_login", "flask_wtf", "werkzeug", "wtforms", "jinja2")
SQL = ("sqlalchemy", "alembic")

# part -> (app parts it may import, third-party roots it must not import)
RULES = {
    "app.core": ({"app.core"}, WEB_FRAMEWORK + SQL),
    "app.caffe": ({"app.core", "app.caffe"}, WEB_FRAMEWORK + SQL),
    "app.contained": ({"app.core", "app.caffe", "app.contained"}, WEB_FRAMEWORK + SQL),  # no runner: below
    "app.store": ({"app.core", "app.store"}, WEB_FRAMEWORK),
    "app.services": ({"app.core", "app.caffe", "app.store", "app.services"}, WEB_FRAMEWORK),
    "app.worker": ({"app.core", "app.caffe", "app.store", "app.services", "app.worker"}, WEB_FRAMEWORK),
    "app.web": ({"app.core", "app.caffe", "app.store", "app.services", "app.worker", "app.web"}, ()),
}
# Views: thin, through services only (the factory and the CLI wire the store up).
VIEWS = ("app.web.pages", "app.web.api", "app.web.digits")
RUNNERS = ("train", "validate", "infer", "infer_server", "build_dataset", "probe", "envprobe", "segment")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(APP.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _part(module: str) -> str | None:
    for part in RULES:
        if module == part or module.startswith(part + "."):
            return part
    return None


@pytest.mark.parametrize("name,path", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_follow_the_layout(name, path):
    part = _part(name)
    if name == "app":
        assert _imports(path, name) <= {"__future__", "__future__.annotations"}, \
            "app/__init__.py must import nothing (runners execute it first)"
        return
    assert part is not None, f"{name} lies outside the layout's parts"
    allowed, banned = RULES[part]
    bad = []
    for mod in _imports(path, name):
        root = mod.split(".")[0]
        if root in banned:
            bad.append(mod)
        target = _part(mod)
        if target is not None and target not in allowed:
            bad.append(mod)
        if part == "app.contained" and target == "app.contained" and mod.split(".")[2:3] != name.split(".")[2:3] \
                and mod != "app.contained" and mod.split(".")[2] in RUNNERS:
            # Helpers a runner calls (gradcheck, layerview) are no runners.
            bad.append(mod + " (runners do not import each other)")
        if (name in VIEWS or name.startswith(VIEWS[-1] + ".")) and target == "app.store":
            bad.append(mod + " (views reach the store through services)")
    assert not bad, f"{name} imports {sorted(set(bad))}"


@pytest.mark.parametrize("runner", RUNNERS)
def test_runner_loads_neither_flask_nor_the_store(runner):
    code = (f"import sys, app.contained.{runner}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{WEB_FRAMEWORK + SQL!r} or m == 'app.store' or m.startswith(('app.web', 'app.services', 'app.worker')))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_rules_catch_a_violation(tmp_path):
    # The checker itself can fail: a runner importing Flask is reported.
    bad = tmp_path / "app" / "contained" / "evil.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from flask import Flask\nfrom app.services import sandbox\nfrom app.contained import train\n")
    found = _imports(bad, "app.contained.evil")
    assert "flask" in {m.split(".")[0] for m in found}
    assert _part("app.services.sandbox") not in RULES["app.contained"][0]
