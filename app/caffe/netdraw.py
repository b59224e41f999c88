"""Network pictures: a Graphviz graph of a parsed network (layers as boxes,
blobs as ovals, Python layers highlighted with their class), rendered to SVG
by `dot`. Built from the protobuf message: the web process never imports
caffe.

A DIGITS all-in-one network holds three nets (train, val, deploy) whose
layers share blob names: a picture of one ``stage`` draws only the layers that
stage's net contains, wired as Caffe wires them. The picture of all stages
keeps one producer map per stage, so a layer in several stages is fed by each
stage's own producer (an edge coloured by its stage), never by whichever
layer happened to come last in the file."""
from __future__ import annotations

import subprocess

from google.protobuf.message import Message

from app.caffe.network import included, layer_stages, state

MAX_LAYERS = 3000
STAGES = ("train", "val", "deploy")
_STYLE = {"Python": 'style=filled fillcolor="#fde68a" color="#b45309" penwidth=2',
          "Convolution": 'style=filled fillcolor="#dbeafe"', "InnerProduct": 'style=filled fillcolor="#e0e7ff"',
          "Data": 'style=filled fillcolor="#dcfce7"', "Input": 'style=filled fillcolor="#dcfce7"'}
# Edge colours of the all-stages picture: an edge that only one or two
# stages have says which (and its label names them).
STAGE_COLOURS = {"train": "#2563eb", "val": "#c2410c", "deploy": "#7c3aed"}


def _q(text: str) -> str:
    # A DOT quoted string: backslashes and quotes escaped, no raw newlines.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def stage_graph(net: Message, stage: str | None = None) -> tuple[dict, list[tuple[str, str, tuple[str, ...]]]]:
    """The picture as data: ({node id: (kind, label, layer)}, [(src, dst,
    stages)]); kind "layer", "blob" (a layer's top) or "input" (a blob the
    stage reads before any of its layers makes it: the Data layers DIGITS
    adds, the deploy net's input). ``stage`` None: every stage in one graph."""
    stages = STAGES if stage is None else (stage,)
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    states = {s: state(s) for s in stages}
    nodes: dict[str, tuple[str, str, Message | None]] = {}
    edges: dict[tuple[str, str], list[str]] = {}
    producer: dict[str, dict[str, str]] = {s: {} for s in stages}   # per stage: blob name -> node id
    inputs: dict[str, str] = {}   # a blob read before any layer of its stage made it: one node per name

    count = [0]

    def blob(label: str, kind: str = "blob") -> str:
        node = f"B{count[0]}"
        count[0] += 1
        nodes[node] = (kind, label, None)
        return node

    for i, layer in enumerate(list(net.layer)[:MAX_LAYERS]):
        present = [s for s in stages if included(layer, states[s])]
        if not present:
            continue
        node = f"L{i}"
        nodes[node] = ("layer", layer.name, layer)
        for bottom in layer.bottom:
            for s in present:
                src = producer[s].get(bottom)
                if src is None:
                    src = inputs.get(bottom) or inputs.setdefault(bottom, blob(bottom, "input"))
                edges.setdefault((src, node), []).append(s)
        tops = {}
        for top in layer.top:
            if top not in tops:
                tops[top] = blob(top)
                edges.setdefault((node, tops[top]), []).extend(present)
            for s in present:
                producer[s][top] = tops[top]   # in-place layers chain: the next reader sees this one
    return nodes, [(a, b, tuple(dict.fromkeys(ss))) for (a, b), ss in edges.items()]


def to_dot(net: Message, rankdir: str = "TB", stage: str | None = None) -> str:
    """The DOT source for ``net``'s ``stage`` net (None: all stages)."""
    title = net.name or "network"
    if stage is not None:
        title += f" · {stage}"
    lines = ["digraph net {", f"rankdir={rankdir}; node [fontname=\"DejaVu Sans\" fontsize=10];",
             "edge [fontname=\"DejaVu Sans\" fontsize=8];", f"label={_q(title)}; labelloc=t;"]
    nodes, edges = stage_graph(net, stage)
    for node, (kind, label, layer) in nodes.items():
        if kind != "layer":   # an input: dashed, where the net is fed from outside
            dashed = " style=dashed" if kind == "input" else ""
            lines.append(f"{node} [shape=oval color=\"#6b7280\"{dashed} label={_q(label)}];")
            continue
        text = f"{layer.name}\n{layer.type}"
        if layer.type == "Python":
            text = f"{layer.name}\nPython: {layer.python_param.layer}\n({layer.python_param.module})"
        where = layer_stages(layer)
        if stage is None and len(where) < 3:
            text += "\n[" + ", ".join(where or ["never"]) + "]"
        lines.append(f"{node} [shape=box {_STYLE.get(layer.type, '')} label={_q(text)}];")
    for src, dst, ss in edges:
        attrs = ""
        if stage is None and len(ss) < len(STAGES):
            attrs = f" [color={_q(STAGE_COLOURS[ss[0]])} fontcolor={_q(STAGE_COLOURS[ss[0]])} " \
                    f"label={_q(', '.join(ss))}]"
        lines.append(f"{src} -> {dst}{attrs};")
    lines.append("}")
    return "\n".join(lines)


def render_svg(net: Message, timeout: float = 20.0, stage: str | None = None) -> bytes:
    """SVG bytes of the network graph (raises RuntimeError on failure)."""
    try:
        out = subprocess.run(["dot", "-Tsvg"], input=to_dot(net, stage=stage).encode(), capture_output=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"graphviz failed: {exc}") from None
    if out.returncode != 0:
        raise RuntimeError("graphviz failed: " + out.stderr.decode(errors="replace")[-300:])
    return out.stdout
