"""No import circle anywhere in app/ (issue 26): the module graph, counting
imports inside functions too (a deferred import still ties two modules
together; it only hides the circle from Python), has no strongly connected
component of more than one module. The rule's own loop is proven on a
planted circle."""
from __future__ import annotations

import ast
from collections import defaultdict

from helpers import ROOT


def module_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the app modules it imports (at any depth of its code)."""
    mods = set(sources)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def app_sources() -> dict[str, str]:
    out = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path.read_text()
    return out


def test_no_import_cycle_in_app():
    found = cycles(module_graph(app_sources()))
    assert not found, "import circles (move what both sides need into a module below them):\n" + \
        "\n".join("  " + " -> ".join(c) for c in found)


def test_the_rule_finds_a_planted_circle():
    sources = dict(app_sources())
    sources["app.services.planted_a"] = "def f():\n    from app.services import planted_b\n"
    sources["app.services.planted_b"] = "from app.services.planted_a import f\n"
    assert ["app.services.planted_a", "app.services.planted_b"] in cycles(module_graph(sources))


# app/services by subject (issue 26): each package may import only the
# packages before it here (and the two shared modules, context and access),
# so no package circle can form either. The order is the design: where user
# code runs, then layer files, inference, jobs, datasets (a finished build
# releases the jobs waiting on it), accounts (deleting a user checks what
# they own), operations (health, metrics, backups look at everything).
SERVICE_ORDER = ["runtime", "layers", "inference", "jobs", "datasets", "accounts", "operations"]
SERVICE_SHARED = {"app.services", "app.services.context", "app.services.access"}


def service_layer_violations(sources: dict[str, str]) -> list[str]:
    """"a -> b" for each services module of package a importing package b
    where b does not come before a in SERVICE_ORDER (or is not a package)."""
    bad = []
    for name, deps in module_graph(sources).items():
        if not name.startswith("app.services."):
            continue
        parts = name.split(".")
        if name in SERVICE_SHARED:
            src = None
        elif parts[2] not in SERVICE_ORDER:
            bad.append(f"{name}: a services module outside the subject packages {SERVICE_ORDER}")
            continue
        else:
            src = parts[2]
        for dep in sorted(deps):
            if not dep.startswith("app.services.") or dep in SERVICE_SHARED:
                continue
            pkg = dep.split(".")[2]
            if src is None:
                bad.append(f"{name} -> {dep}: the shared modules import no package")
            elif pkg != src and (pkg not in SERVICE_ORDER or SERVICE_ORDER.index(pkg) > SERVICE_ORDER.index(src)):
                bad.append(f"{name} -> {dep}: {src} may import only {SERVICE_ORDER[:SERVICE_ORDER.index(src)]}")
    return bad


def test_services_packages_import_only_the_ones_below():
    bad = service_layer_violations(app_sources())
    assert not bad, "\n".join(bad)


def test_the_package_rule_finds_a_planted_upward_import():
    sources = dict(app_sources())
    sources["app.services.runtime.planted"] = "def f():\n    from app.services.jobs import lifecycle\n"
    sources["app.services.planted_flat"] = "x = 1\n"
    bad = service_layer_violations(sources)
    assert any(b.startswith("app.services.runtime.planted -> app.services.jobs.lifecycle") for b in bad), bad
    assert any(b.startswith("app.services.planted_flat:") for b in bad), bad
