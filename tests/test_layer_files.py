"""Python layers with helper modules and the packages they need (issue 17):
several files or a zip, the visible layer environment, administrator-added
packages, and no host path in anything a user sees. Real sandbox, real Caffe."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers import DATA, ROOT, wait_for

ML = DATA / "multilabel"
WHEELS = DATA / "wheels"
INFLECTION = "inflection==0.5.1 --hash=sha256:f38b2b640938a4f35ade69ac3d053042959b62a0f1076a5bbaa1b9526605a8a2"


def _files(*pairs) -> list:
    return [(io.BytesIO(data if isinstance(data, bytes) else data.encode()), name) for name, data in pairs]


def _send(client, url: str, layers: list, network: str | None = None, **fields):
    data = {"network": (io.BytesIO((network or (ML / "multilabel.prototxt").read_text()).encode()), "net.prototxt"),
            "python_layer": layers, "dataset": "", "max_iter": "6", **{k: str(v) for k, v in fields.items()}}
    return client.post(url, data=data, content_type="multipart/form-data")


def _zip(entries: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in entries.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _no_checkout_path(*bodies) -> None:
    for body in bodies:
        text = body if isinstance(body, str) else json.dumps(body)
        assert str(ROOT) not in text, text[max(0, text.find(str(ROOT)) - 300):][:600]


MAIN = (ML / "multilabel_datalayers.py").read_text()
TOOLS = (ML / "tools.py").read_text()


@pytest.mark.slow
def test_multilabel_layer_with_its_helper_module_validates_trains_and_carries(app, client, worker):
    # Caffe's pascal_multilabel_datalayers.py pattern: `from tools import SimpleTransformer`.
    alone = _send(client, "/api/v1/validate", _files(("multilabel_datalayers.py", MAIN))).get_json()
    assert not alone["ok"]
    err = alone["errors"][0]
    assert err["stage"] == "import" and err["line"] == MAIN.splitlines().index(
        "from tools import SimpleTransformer") + 1
    assert "No module named 'tools'" in err["message"] and "/layer-env" in err["message"]

    resp = _send(client, "/api/v1/jobs", _files(("multilabel_datalayers.py", MAIN), ("tools.py", TOOLS)))
    assert resp.status_code == 201, resp.get_json()
    job = resp.get_json()
    assert job["python_layer"]["files"] == ["digits_python_layers.py", "tools.py"]
    assert job["python_layer"]["original_filename"] == "multilabel_datalayers.py"
    assert job["python_layer"]["classes"] == ["MultilabelDataLayerSync"]
    done = wait_for(client, job["id"], {"done", "error"}, timeout=120)
    assert done["status"] == "done", done
    assert done["metrics"]["train"], done
    log = client.get(f"/api/v1/jobs/{job['id']}/log").get_data(as_text=True)
    report = client.get(f"/jobs/{job['id']}", headers={"Accept": "text/html"}).get_data(as_text=True)
    _no_checkout_path(done, log, report)
    # The log names the job's files relative to the job, not where it lies.
    assert "<job>/input/train_val.prototxt" in log and app.config["JOBS_DIR"] not in log

    with client.get(f"/api/v1/jobs/{job['id']}/download") as resp:
        data = resp.data
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        assert tf.extractfile("tools.py").read().decode() == TOOLS
    assert "digits_python_layers.py" in names

    clone = client.post(f"/api/v1/jobs/{job['id']}/clone", data={"max_iter": "2"})
    assert clone.status_code == 201, clone.get_json()
    assert clone.get_json()["python_layer"]["files"] == ["digits_python_layers.py", "tools.py"]
    client.post(f"/api/v1/jobs/{clone.get_json()['id']}/abort")
    # Fine-tuning from it brings its network and every layer file along.
    tuned = client.post("/api/v1/jobs", data={"previous_job": job["id"], "previous_snapshot": "-1",
                                              "max_iter": "2", "dataset": ""}, content_type="multipart/form-data")
    assert tuned.status_code == 201, tuned.get_json()
    assert tuned.get_json()["python_layer"]["files"] == ["digits_python_layers.py", "tools.py"]
    client.post(f"/api/v1/jobs/{tuned.get_json()['id']}/abort")


@pytest.mark.slow
def test_training_error_in_a_helper_names_that_file_and_no_server_path(client, worker):
    # Validation runs a few batches (32 images); training goes further and fails in tools.py.
    late = TOOLS.replace("        im = np.float32(im)\n", "        im = np.float32(im)\n"
                         "        self.n = getattr(self, 'n', 0) + 1\n"
                         "        if self.n > 40:\n            raise ValueError('late failure in tools')\n")
    job = _send(client, "/api/v1/jobs", _files(("multilabel_datalayers.py", MAIN), ("tools.py", late))).get_json()
    ended = wait_for(client, job["id"], {"done", "error"}, timeout=120)
    assert ended["status"] == "error", ended
    err = ended["error"]
    assert err["file"] == "tools.py" and err["line"] == late.splitlines().index(
        "            raise ValueError('late failure in tools')") + 1
    assert "late failure in tools" in err["message"]
    assert 'File "tools.py"' in err["traceback"] and 'File "digits_python_layers.py"' in err["traceback"]
    log = client.get(f"/api/v1/jobs/{job['id']}/log").get_data(as_text=True)
    _no_checkout_path(ended, log)


def test_zip_with_a_nested_helper_package(client):
    # One wrapping folder; the layers import a helper package two levels deep,
    # and an error inside the package names that file, never a server path.
    pkg_main = MAIN.replace("from tools import SimpleTransformer", "from helpers.vision.tools import SimpleTransformer")
    entries = {"mylayers/layers.py": pkg_main, "mylayers/helpers/__init__.py": "",
               "mylayers/helpers/vision/__init__.py": "", "mylayers/helpers/vision/tools.py": TOOLS,
               "mylayers/README.txt": "not python", "__MACOSX/mylayers/._layers.py": "junk"}
    report = _send(client, "/api/v1/validate", _files(("layers.zip", _zip(entries)))).get_json()
    assert report["ok"], report["errors"]
    # A sweep hands the same files to every job it makes.
    swept = _send(client, "/api/v1/jobs", _files(("layers.zip", _zip(entries))), learning_rate="0.01,0.02")
    assert swept.status_code == 201, swept.get_json()
    for j in swept.get_json()["jobs"]:
        assert j["python_layer"]["files"] == ["digits_python_layers.py", "helpers/__init__.py",
                                              "helpers/vision/__init__.py", "helpers/vision/tools.py"]
        client.post(f"/api/v1/jobs/{j['id']}/abort")

    broken = TOOLS.replace("        im = np.float32(im)\n", "        im = np.float32(im)\n        im.reshape(7, 7, 7)\n")
    entries["mylayers/helpers/vision/tools.py"] = broken
    report = _send(client, "/api/v1/validate", _files(("layers.zip", _zip(entries)))).get_json()
    assert not report["ok"]
    err = report["errors"][0]
    assert err["file"] == "helpers/vision/tools.py"
    assert err["line"] == broken.splitlines().index("        im.reshape(7, 7, 7)") + 1
    assert 'File "helpers/vision/tools.py"' in err["traceback"]
    assert 'File "digits_python_layers.py"' in err["traceback"]
    _no_checkout_path(report)


@pytest.mark.parametrize("bad", ["../evil.py", "/tmp/evil.py", "ok/../../evil.py"])
def test_zip_entries_outside_the_upload_are_refused(client, app, bad):
    body = _zip({"layers.py": MAIN, "tools.py": TOOLS, bad: "print('escaped')\n"})
    resp = _send(client, "/api/v1/jobs", _files(("layers.zip", body)))
    assert resp.status_code == 400
    err = resp.get_json()
    assert err["error"] == "invalid_python_layer"
    assert "refused entry" in err["message"] and "'..'" in err["message"]
    assert err["details"][0]["file"] == "layers.zip"
    # /validate answers 200 with the same error in its report (API.md).
    report = _send(client, "/api/v1/validate", _files(("layers.zip", body))).get_json()
    assert not report["ok"] and "refused entry" in report["errors"][0]["message"]
    jobs = Path(app.config["JOBS_DIR"])
    assert not list(jobs.rglob("evil.py")) and not Path("/tmp/evil.py").exists()


def test_main_file_choice_and_name_clashes(client):
    # Two files defining no named class: the user must say which holds the layers.
    resp = _send(client, "/api/v1/jobs", _files(("a.py", "x = 1\n"), ("b.py", "y = 2\n")))
    assert resp.status_code == 400 and resp.get_json()["details"][0]["field"] == "python_layer_main"
    # Two files named alike once sanitised, and a helper taking the layer file's name.
    resp = _send(client, "/api/v1/jobs", _files(("x.py", MAIN), ("my-tools.py", TOOLS), ("my_tools.py", TOOLS)))
    assert resp.status_code == 400 and "my_tools.py" in resp.get_json()["message"]
    resp = _send(client, "/api/v1/jobs", _files(("x.py", MAIN), ("digits_python_layers.py", TOOLS)),
                 python_layer_main="x.py")
    assert resp.status_code == 400 and "rename it" in resp.get_json()["message"]
    # Marked explicitly (and sanitised: my-tools.py is importable as my_tools).
    main = MAIN.replace("from tools import", "from my_tools import")
    report = _send(client, "/api/v1/validate", _files(("x.py", main), ("my-tools.py", TOOLS)),
                   python_layer_main="x.py").get_json()
    assert report["ok"], report["errors"]


@pytest.mark.slow
def test_admin_added_package_and_the_visible_environment(app, client):
    layer = MAIN.replace("import numpy as np\n", "import numpy as np\nimport inflection\n", 1).replace(
        "        self.batch_size = params['batch_size']",
        "        self.batch_size = params['batch_size']\n        assert inflection.underscore('DataLayer') == 'data_layer'")
    files = lambda: _files(("multilabel_datalayers.py", layer), ("tools.py", TOOLS))   # noqa: E731
    before = _send(client, "/api/v1/validate", files()).get_json()
    assert not before["ok"]
    msg = before["errors"][0]["message"]
    assert "No module named 'inflection'" in msg and "not installed" in msg and "/layer-env" in msg
    env = client.get("/api/v1/layer-env").get_json()
    assert env["ok"] and env["fingerprint"] == "none" and env["python"]["version"].startswith("3.")
    names = {p["name"].lower(): p for p in env["packages"]}
    assert "numpy" in names and "inflection" not in names and env["caffe"]["with_python_layer"]

    runner = app.test_cli_runner()
    out = runner.invoke(args=["layer-env", "add", INFLECTION, "--pip-arg=--no-index",
                              f"--pip-arg=--find-links={WHEELS}"])
    assert out.exit_code == 0, out.output
    added = json.loads(out.output)
    assert added["packages"] == ["inflection==0.5.1"] and added["fingerprint"].startswith("sha256:")
    # Never in the service's own environment.
    import importlib.util
    assert importlib.util.find_spec("inflection") is None

    after = _send(client, "/api/v1/jobs", files())
    assert after.status_code == 201, after.get_json()
    job = after.get_json()
    assert job["python_layer"]["environment"] == added["fingerprint"]
    env = client.get("/api/v1/layer-env").get_json()
    assert {"name": "inflection", "version": "0.5.1", "origin": "admin"} in env["packages"]
    page = client.get("/layer-env").get_data(as_text=True)
    assert "inflection" in page and added["fingerprint"] in page
    _no_checkout_path(before, env, job, page)

    # The list emptied: the job's environment is gone, and it says so.
    from app.services.jobs import lifecycle as job_service
    from app.services.layers import environments as layer_env
    layer_env.requirements_path(app.extensions["ctx"].cfg).write_text("")
    assert runner.invoke(args=["layer-env", "sync"]).exit_code == 0
    record = job_service.get(app.extensions["ctx"], job["id"], {"name": "admin", "admin": True})
    assert "changed" in layer_env.job_warnings(app.extensions["ctx"].cfg, record)[0]
    assert not _send(client, "/api/v1/validate", files()).get_json()["ok"]
    client.post(f"/api/v1/jobs/{job['id']}/abort")


def test_unpinned_requirement_is_refused(app):
    out = app.test_cli_runner().invoke(args=["layer-env", "add", "inflection"])
    assert out.exit_code != 0 and "not pinned" in out.output


def test_browser_form_takes_several_layer_files(client):
    import re
    html = client.get("/jobs/new").get_data(as_text=True)
    assert re.search(r'<input[^>]*multiple[^>]*name="python_layer"|<input[^>]*name="python_layer"[^>]*multiple', html)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    data = {"csrf_token": token, "action": "validate", "dataset": "", "max_iter": "6", "solver_type": "SGD",
            "lr_policy": "fixed", "learning_rate": "0.01", "device": "cpu",
            "network": (io.BytesIO((ML / "multilabel.prototxt").read_bytes()), "multilabel.prototxt"),
            "python_layer": _files(("x.py", MAIN.replace("from tools", "from my_tools")), ("my-tools.py", TOOLS)),
            "python_layer_main": "x.py"}
    resp = client.post("/jobs/new", data=data, content_type="multipart/form-data")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Valid: every layer built and ran." in page, page[-3000:]
    assert "MultilabelDataLayerSync" in page
