"""The gradient check's verdicts (app/contained/gradcheck.py) in the report:
a wrong or missing backward is a warning, or, when the user asked for it
(`gradient_check=error`), an error that refuses the upload."""
from __future__ import annotations

from app.core.workspace import LAYER_FILE

MODES = ("warn", "error")
BAD = ("wrong", "not_implemented")


def parse_mode(raw: str | None, details: list[dict]) -> str:
    """`gradient_check` from a form or API field: warn (the default) or error;
    a bad value adds a detail to ``details``."""
    mode = (raw or "warn").strip().lower()
    if mode not in MODES:
        details.append({"field": "gradient_check", "message": "use warn or error"})
    return mode


def apply_policy(report: dict, mode: str) -> None:
    """Turn each wrong / not_implemented verdict into a warning, or with
    ``mode`` "error" into an error naming the layer and blob (report not ok)."""
    if not report.get("ok"):
        return
    for entry in report.get("gradient_check") or []:
        if entry.get("verdict") not in BAD:
            continue
        what = "is wrong" if entry["verdict"] == "wrong" else "is not implemented"
        blob = entry.get("blob")
        detail = {"field": "python_layer", "file": LAYER_FILE, "line": entry.get("line"),
                  "layer": entry.get("layer"), "blob": blob, "stage": "gradient_check",
                  "message": f"The gradient of layer '{entry.get('layer')}' for "
                             f"{'parameter ' if entry.get('kind') == 'param' else 'bottom '}'{blob}' {what} "
                             f"(gradient check, max relative error {entry.get('max_rel_error')}): "
                             f"{entry.get('reason')}"}
        if mode == "error":
            report["errors"].append(detail)
            report["ok"] = False
        else:
            report.setdefault("warnings", []).append(detail)
