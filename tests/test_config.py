"""Settings (app.core.config): parsed once by ``load``, typed, read-only; no
use site in app/ casts or scales a setting again; README lists every one."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from helpers import ROOT

from app.core import config
from app.core.config import PREFIX, _SETTINGS, Settings

APP = ROOT / "app"
FILLED = {"DATABASE_URL", "BROKER_URL", "CAFFE_PYTHON"}   # a None default that load() fills in


def _load(**overrides) -> Settings:
    return config.load(environ={}, overrides=overrides)


# --- the object -------------------------------------------------------------------------------

def test_settings_are_read_only():
    cfg = _load()
    with pytest.raises(AttributeError):
        cfg.validate_timeout = 1
    with pytest.raises(AttributeError):
        cfg.new_thing = 1
    with pytest.raises(AttributeError):
        del cfg.queue
    with pytest.raises(TypeError):
        cfg["VALIDATE_TIMEOUT"] = 1          # a Mapping, not a dict
    with pytest.raises(AttributeError):
        cfg.update({"QUEUE": "celery"})
    with pytest.raises(AttributeError):
        cfg.no_such_setting
    # A changed copy is a new object; the original stays as it was.
    changed = cfg.replace(VALIDATE_TIMEOUT="7")
    assert changed.validate_timeout == 7 and changed["VALIDATE_TIMEOUT"] == 7 and cfg.validate_timeout == 60
    assert changed is not cfg and changed != cfg and _load() == cfg


def test_every_setting_has_its_type_under_its_name_and_attribute():
    cfg = _load()
    assert set(cfg) == set(_SETTINGS) and len(cfg) == len(_SETTINGS)
    for name, (default, kind) in _SETTINGS.items():
        value = cfg[name]
        assert cfg.get(name) == value
        if default is None and name not in FILLED:
            assert value is None, name
        else:
            assert type(value) is kind, (name, value)
        if name not in ("JOBS_DIR", "INSTANCE_DIR"):
            assert getattr(cfg, name.lower()) == value, name
    # Every setting is typed even when the environment or a test gave text.
    env = {PREFIX + name: str(int(default) if kind is bool else default)
           for name, (default, kind) in _SETTINGS.items() if default is not None}
    from_text = config.load(environ=env)
    for name, (default, kind) in _SETTINGS.items():
        if default is not None:
            assert type(from_text[name]) is kind and from_text[name] == default, name


def test_derived_values():
    cfg = _load(MAX_LAYER_FILE_KB=3, MAX_UPLOAD_MB="5", JOBS_DIR="/srv/jobs", INSTANCE_DIR=Path("/srv/inst"),
                CAFFE_PYTHON="/opt/venv/bin/python", SANDBOX_UIDS="10-19")
    assert cfg.max_layer_file_bytes == 3 << 10 and cfg.max_upload_bytes == 5 << 20
    for name in _SETTINGS:          # every size has its bytes
        for unit, shift in (("_MB", 20), ("_KB", 10)):
            if name.endswith(unit):
                assert getattr(cfg, name[:-3].lower() + "_bytes") == cfg[name] << shift, name
    assert {n for n in dir(cfg) if n.endswith("_bytes")} >= {
        "max_layer_file_bytes", "max_network_file_bytes", "max_upload_bytes", "max_weights_bytes",
        "memory_limit_bytes", "dataset_max_bytes", "log_max_bytes", "job_disk_bytes", "disk_low_bytes",
        "max_download_file_bytes"}
    assert cfg.jobs_dir == Path("/srv/jobs") and cfg["JOBS_DIR"] == "/srv/jobs"
    assert cfg.instance_dir == Path("/srv/inst") and cfg["INSTANCE_DIR"] == "/srv/inst"
    assert cfg.caffe_python == "/opt/venv/bin/python" and cfg.caffe_python_dir == Path("/opt/venv/bin")
    assert cfg.sandbox_uid_range == range(10, 20)
    assert cfg.database_url == "sqlite:////srv/inst/layerbench.sqlite3"
    assert cfg.broker_url == cfg.redis_url
    assert config.flask_settings(cfg)["MAX_CONTENT_LENGTH"] == 5 << 20


def test_overrides_win_and_are_parsed():
    env = {PREFIX + "VALIDATE_TIMEOUT": "9", PREFIX + "DATABASE_URL": "postgresql://db/x", PREFIX + "PRIVSEP": "0"}
    assert config.load(environ=env).validate_timeout == 9
    assert config.load(environ=env).privsep is False
    cfg = config.load(environ=env, overrides={"VALIDATE_TIMEOUT": "4", "PRIVSEP": "yes", "HEARTBEAT_SECONDS": 2,
                                              "WORKER_POLL_SECONDS": "0.5", "ALLOW_UNCONTAINED": True})
    assert cfg.validate_timeout == 4 and cfg.privsep is True and cfg.allow_uncontained is True
    assert cfg.heartbeat_seconds == 2.0 and type(cfg.heartbeat_seconds) is float and cfg.worker_poll_seconds == 0.5
    assert cfg.database_url == "postgresql://db/x"
    # An instance dir given as an override brings its own database, whatever the environment says.
    assert config.load(environ=env, overrides={"INSTANCE_DIR": "/i"}).database_url == "sqlite:////i/layerbench.sqlite3"
    assert config.load(environ=env, overrides={"INSTANCE_DIR": "/i", "DATABASE_URL": "sqlite:///x"}).database_url \
        == "sqlite:///x"
    # Empty or None: the default.
    assert _load(VALIDATE_TIMEOUT="", MEMORY_LIMIT_MB=None).validate_timeout == 60


@pytest.mark.parametrize("name,value", [("MAX_UPLOAD_MB", "lots"), ("MAX_UPLOAD_MB", 1.5), ("MAX_UPLOAD_MB", True),
                                        ("HEARTBEAT_SECONDS", "soon"), ("PRIVSEP", "maybe"), ("PRIVSEP", 1),
                                        ("QUEUE", 3), ("SANDBOX_UIDS", "many")])
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ValueError, match=PREFIX + name):
        _load(**{name: value})
    if isinstance(value, str):
        with pytest.raises(ValueError, match=PREFIX + name):
            config.load(environ={PREFIX + name: value})


def test_an_unknown_override_is_refused():
    with pytest.raises(KeyError, match="MAX_UPLOAD_GB"):
        _load(MAX_UPLOAD_GB=1)
    with pytest.raises(KeyError, match="TESTING"):
        _load().replace(TESTING=True)


def test_the_app_hands_services_the_settings(app):
    cfg = app.extensions["ctx"].cfg
    assert isinstance(cfg, Settings) and app.extensions["settings"] is cfg
    assert cfg.worker_poll_seconds == 0.1                     # helpers.make_app's override, parsed
    # Flask still sees every one (SECRET_KEY: unset, so app.secret_key wrote the instance's own there).
    assert {n: app.config[n] for n in _SETTINGS if n != "SECRET_KEY"} == {n: cfg[n] for n in cfg if n != "SECRET_KEY"}
    assert cfg.secret_key is None and app.config["SECRET_KEY"] == app.secret_key
    assert app.config["TESTING"] is True and "TESTING" not in cfg


# --- the rule: no use site casts, scales or defaults a setting again ------------------------

CASTS = {"int", "float", "str", "bool", "Path"}
STR_SETTINGS = {name.lower() for name, (_, kind) in _SETTINGS.items() if kind is str}


def _is_settings(node: ast.AST) -> bool:
    """``cfg``, ``CFG``, ``<x>.cfg``, ``settings()``, ``<x>.config`` (Flask's copy)."""
    if isinstance(node, ast.Name):
        return node.id in ("cfg", "CFG")
    if isinstance(node, ast.Attribute):
        return node.attr in ("cfg", "config")
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in ("settings", "_cfg") and not node.args
    return False


def _lookup(node: ast.AST) -> str | None:
    """The setting's attribute name when ``node`` reads a setting, else None."""
    if isinstance(node, ast.Subscript) and _is_settings(node.value) and isinstance(node.slice, ast.Constant) \
            and node.slice.value in _SETTINGS:
        return str(node.slice.value).lower()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
            and _is_settings(node.func.value) and node.args and isinstance(node.args[0], ast.Constant) \
            and node.args[0].value in _SETTINGS:
        return str(node.args[0].value).lower()
    if isinstance(node, ast.Attribute) and _is_settings(node.value) and node.attr != "get":
        return node.attr
    return None


def _operands(node: ast.AST) -> list[ast.AST]:
    """``node`` and, through ``or``/arithmetic/conditionals, what it is made of."""
    if isinstance(node, ast.BoolOp):
        return [n for v in node.values for n in _operands(v)]
    if isinstance(node, ast.BinOp):
        return [*_operands(node.left), *_operands(node.right)]
    if isinstance(node, ast.IfExp):
        return [*_operands(node.body), *_operands(node.orelse)]
    return [node]


def recasts(source: str, filename: str = "<planted>") -> list[str]:
    """Where ``source`` casts, scales or defaults a setting it could read typed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CASTS and node.args:
            for part in _operands(node.args[0]):
                name = _lookup(part)
                # str() of a number is writing it out (an environment variable), not a re-cast.
                if name and (node.func.id != "str" or name in STR_SETTINGS or not isinstance(part, ast.Attribute)):
                    found.append(f"{where}: {node.func.id}() of setting {name}")
        if isinstance(node, ast.BinOp) and (
                isinstance(node.op, ast.LShift) or
                (isinstance(node.op, ast.Mult) and any(isinstance(s, ast.Constant) and s.value == 1024
                                                       for s in (node.left, node.right)))):
            for part in (node.left, node.right):
                if _lookup(part):
                    found.append(f"{where}: setting {_lookup(part)} scaled to bytes at the use site")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and _lookup(node) and len(node.args) > 1:
            found.append(f"{where}: a default for setting {_lookup(node)} beside config's own")
        # (``or ""`` only says "unset" as text; a number after ``or`` is a default again.)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and _lookup(node.values[0]) \
                and all(isinstance(v, ast.Constant) and not isinstance(v.value, str) for v in node.values[1:]):
            found.append(f"{where}: a default for setting {_lookup(node.values[0])} beside config's own")
    return found


def test_no_use_site_recasts_a_setting():
    found = [hit for path in sorted(APP.rglob("*.py")) if path != APP / "core" / "config.py"
             for hit in recasts(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "read the typed attribute instead (app.core.config.Settings):\n" + "\n".join(found)


def test_the_rule_catches_a_recast():
    planted = '''
limit = int(cfg["MAX_LAYER_FILE_KB"]) << 10
cap = ctx.cfg["MAX_UPLOAD_MB"] * 1024 * 1024
wall = float(c.cfg.get("INFER_IDLE_SECONDS", 300))
n = int(self.ctx.cfg.get("USER_MAX_RUNNING") or 0)
root = Path(str(current_app.config["JOBS_DIR"]))
url = str(CFG.broker_url)
low = settings().disk_low_mb << 20
warm = cfg.get("INFER_WARM", 4)
days = c.cfg.token_days or 0
'''
    found = recasts(planted)
    assert {int(hit.split(":")[1]) for hit in found} == set(range(2, 11)), found   # every line caught
    fine = '''
limit = cfg.max_layer_file_bytes
env = {"LAYERBENCH_DATASET_WORKERS": str(ctx.cfg.dataset_workers)}
gpu = bool(caffe_info(c.cfg.caffe_python).get("gpu_build"))
path = str(cfg.instance_dir.resolve())
flask_only = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
token = settings().monitor_token or ""
'''
    assert recasts(fine) == []


# --- README's configuration table -------------------------------------------------------------

def _readme_settings() -> dict[str, tuple[str, str]]:
    """LAYERBENCH_ name -> (default, meaning) from README's table under '## Configuration'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`LAYERBENCH_"):
            continue
        for token in re.findall(r"`([A-Z_]+)`", cells[0]):
            name = token.removeprefix("LAYERBENCH_") if token.startswith("LAYERBENCH_") else token.lstrip("_")
            assert name not in out, f"{name} twice in README"
            out[name] = (cells[1], cells[2])
    return out


def test_readme_lists_every_setting_and_only_settings():
    listed = _readme_settings()
    assert sorted(set(_SETTINGS) - set(listed)) == [], "settings missing from README's configuration table"
    assert sorted(set(listed) - set(_SETTINGS)) == [], "README lists settings app.core.config does not have"
    for name, (default, meaning) in listed.items():
        assert default and meaning, name
        value = _SETTINGS[name][0]
        if isinstance(value, bool):
            assert ("on" if value else "off") in default, (name, default)
        elif isinstance(value, (int, float)):
            assert f"`{value:g}`" in default or f"`{value}`" in default, (name, value, default)
