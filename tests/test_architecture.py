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
# Views: thin, through services only. Only the app factory (app.web) and the
# `db-upgrade` CLI command wire the store up; no other module of app.web
# imports it or touches it (``extensions["store"]``, ``<ctx>.store``).
VIEWS = ("app.web.pages", "app.web.api", "app.web.digits")
STORE_WIRING = {"app.web", "app.web.cli"}


def _runners() -> tuple[str, ...]:
    # Every module of app.contained that runs as `python -m`: found, not listed
    # (a list here once forgot `weights`).
    return tuple(sorted(p.stem for p in (APP / "contained").glob("*.py")
                        if 'if __name__ == "__main__"' in p.read_text()))


RUNNERS = _runners()


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


def violations(name: str, path: Path) -> list[str]:
    """What module ``name`` (file ``path``) does against the layout: imports of
    parts above it or of banned frameworks, a runner importing another, a
    view importing the store, web code touching the store."""
    part = _part(name)
    if name == "app":
        extra = _imports(path, name) - {"__future__", "__future__.annotations"}
        return [f"app/__init__.py imports {sorted(extra)} (runners execute it first)"] if extra else []
    if part is None:
        return [f"{name} lies outside the layout's parts"]
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
            # Helpers a runner calls (gradcheck, layerview, classifier) are no runners.
            bad.append(mod + " (runners do not import each other)")
        if part == "app.web" and name not in STORE_WIRING and target == "app.store":
            bad.append(mod + " (web code reaches the store through services)")
    if part == "app.web" and name not in STORE_WIRING:
        bad += _store_uses(path)
    return sorted(set(bad))


def _store_uses(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "store":
            out.append(f"line {node.lineno}: [\"store\"] (web code reaches the store through services)")
        elif isinstance(node, ast.Attribute) and node.attr == "store":
            out.append(f"line {node.lineno}: .store (web code reaches the store through services)")
    return out


@pytest.mark.parametrize("name,path", _modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_follow_the_layout(name, path):
    bad = violations(name, path)
    assert not bad, f"{name}: {bad}"


@pytest.mark.parametrize("runner", RUNNERS)
def test_runner_loads_neither_flask_nor_the_store(runner):
    code = (f"import sys, app.contained.{runner}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{WEB_FRAMEWORK + SQL!r} or m == 'app.store' or m.startswith(('app.web', 'app.services', 'app.worker')))\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_rules_catch_a_violation(tmp_path):
    # The very loop the layout test runs, on modules that break each rule.
    planted = {
        "app.contained.evil": "from flask import Flask\nfrom app.services import sandbox\n",
        "app.contained.evil2": "from app.contained import train\n",
        "app.web.pages_evil": "from app.store import Store\n",
        "app.web.view_evil": "from flask import current_app\ndef f():\n    return current_app.extensions['store']\n",
        "app.web.view_evil2": "def f(c):\n    return c.store.get_job('x')\n",
        "app.core.evil": "from app.services import jobs\n",
    }
    for name, text in planted.items():
        path = tmp_path / (name.replace(".", "_") + ".py")
        path.write_text(text)
        assert violations(name, path), f"{name} broke a rule unnoticed"
    assert "weights" in RUNNERS and "train" in RUNNERS