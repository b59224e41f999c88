"""Network pictures: a Graphviz graph of a parsed network (layers as boxes,
blobs as ovals, Python layers highlighted with their class), rendered to SVG
by `dot`. Built from the protobuf message: the web process never imports
caffe."""
from __future__ import annotations

import subprocess

from google.protobuf.message import Message

from app.caffe.network import layer_stages

MAX_LAYERS = 3000
_STYLE = {"Python": 'style=filled fillcolor="#fde68a" color="#b45309" penwidth=2',
          "Convolution": 'style=filled fillcolor="#dbeafe"', "InnerProduct": 'style=filled fillcolor="#e0e7ff"',
          "Data": 'style=filled fillcolor="#dcfce7"', "Input": 'style=filled fillcolor="#dcfce7"'}


def _q(text: str) -> str:
    # A DOT quoted string: backslashes and quotes escaped, no raw newlines.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(net: Message, rankdir: str = "TB") -> str:
    """The DOT source for ``net``."""
    lines = ["digraph net {", f"rankdir={rankdir}; node [fontname=\"DejaVu Sans\" fontsize=10];",
             f"label={_q(net.name or 'network')}; labelloc=t;"]
    producer: dict[str, str] = {}
    for i, layer in enumerate(list(net.layer)[:MAX_LAYERS]):
        node = f"L{i}"
        label = f"{layer.name}\n{layer.type}"
        if layer.type == "Python":
            label = f"{layer.name}\nPython: {layer.python_param.layer}\n({layer.python_param.module})"
        stages = layer_stages(layer)
        if len(stages) < 3:
            label += "\n[" + ", ".join(stages or ["never"]) + "]"
        lines.append(f"{node} [shape=box {_STYLE.get(layer.type, '')} label={_q(label)}];")
        for bottom in layer.bottom:
            src = producer.get(bottom)
            if src is None:
                src = producer[bottom] = f"B{len(producer)}"
                lines.append(f"{src} [shape=oval color=\"#6b7280\" label={_q(bottom)}];")
            lines.append(f"{src} -> {node};")
        for top in layer.top:
            blob = f"B{len(producer)}"
            lines.append(f"{blob} [shape=oval color=\"#6b7280\" label={_q(top)}];")
            lines.append(f"{node} -> {blob};")
            producer[top] = blob   # in-place layers chain: the next reader sees this one
    lines.append("}")
    return "\n".join(lines)


def render_svg(net: Message, timeout: float = 20.0) -> bytes:
    """SVG bytes of the network graph (raises RuntimeError on failure)."""
    try:
        out = subprocess.run(["dot", "-Tsvg"], input=to_dot(net).encode(), capture_output=True,
                             timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"graphviz failed: {exc}") from None
    if out.returncode != 0:
        raise RuntimeError("graphviz failed: " + out.stderr.decode(errors="replace")[-300:])
    return out.stdout
