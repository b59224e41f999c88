"""The pages a user lives in, continued (issue 25, items 3, 9 and 10): a
layer file no layer uses is a warning, not a silent "valid"; Clone opens the
filled-in form (files carried on the server) instead of queueing a job;
"Train on this dataset", Datasets and an HTML Health page in the menu; the
network picture drawn per stage and redrawn after Visualize and Validate.

One app for the module, served over real HTTP, no worker (jobs stay queued:
nothing here needs them to train), and one headless Chromium shared by the
browser tests."""
from __future__ import annotations

import base64
import re
import shutil
import threading
import urllib.parse
from types import SimpleNamespace

import pytest

from app.caffe import netdraw, network
from helpers import LENET_SEED, SEED_LAYER, api, chrome, client_for, make_app, post, sign_in, wait_in_browser

PASSWORD = "pw-for-pages-more"
LENET = network.standard_network_text("lenet")   # the standard LeNet: no Python layer


# ---- the network picture, as DOT -------------------------------------------------------------------


def _graph(dot: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """({node id: its label's first line}, {(src label, dst label)}) of a DOT text."""
    labels = {m.group(1): m.group(2).split("\\n")[0]
              for m in re.finditer(r'^(\w+) \[shape=\w+.*?label="((?:[^"\\]|\\.)*)"', dot, re.M)}
    ids = set(re.findall(r"^(\w+) -> (\w+)", dot, re.M))
    return labels, {(labels[a], labels[b]) for a, b in ids} | {("#" + a, "#" + b) for a, b in ids}


def _two_way(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in edges if a.startswith("#") and (b, a) in edges}


def test_lenet_picture_per_stage_wires_each_stage_as_caffe_does():
    net = network.parse(LENET).net
    train_labels, train = _graph(netdraw.to_dot(net, stage="train"))
    # train: fed by train-data only; both of its tops are read; no loops.
    assert "val-data" not in train_labels.values() and "softmax" not in train_labels.values()
    assert ("train-data", "data") in train and ("data", "scale") in train and ("scale", "scaled") in train
    assert ("train-data", "label") in train and ("label", "loss") in train
    assert not _two_way(train)
    assert not any(a == "scaled" and b == "scale" for a, b in train)
    val_labels, val = _graph(netdraw.to_dot(net, stage="val"))
    assert "train-data" not in val_labels.values() and ("label", "accuracy") in val
    deploy_labels, deploy = _graph(netdraw.to_dot(net, stage="deploy"))
    assert {"train-data", "val-data", "loss", "accuracy"}.isdisjoint(deploy_labels.values())
    assert ("data", "scale") in deploy and ("ip2", "softmax") in deploy

    # All stages in one graph: scale is fed by each stage's own data (edges
    # coloured and named by stage), and nothing loops back.
    dot = netdraw.to_dot(net)
    labels, edges = _graph(dot)
    assert not _two_way(edges)
    ids = {v: k for k, v in labels.items() if v in ("train-data", "val-data", "scale")}
    into_scale = re.findall(rf'^(\w+) -> {ids["scale"]}(.*);$', dot, re.M)
    assert sorted(a[1].split('label="')[1].rstrip('"]') for a in into_scale) == ["deploy", "train", "val"]
    for data_layer in ("train-data", "val-data"):   # each data layer's tops are two distinct blobs, both read
        tops = re.findall(rf'^{ids[data_layer]} -> (\w+)', dot, re.M)
        assert sorted(labels[t] for t in tops) == ["data", "label"]
        for t in tops:
            assert re.search(rf"^{t} -> ", dot, re.M), (data_layer, labels[t])


def test_visualize_and_job_picture_take_a_stage(site):
    c = site.client
    token = _csrf(c, "/jobs/new")
    pictures = {}
    for stage in ("train", "val", "deploy", ""):
        resp = c.post("/networks/visualize", data={"csrf_token": token, "network_text": LENET, "stage": stage})
        assert resp.status_code == 200 and resp.mimetype == "image/svg+xml"
        pictures[stage] = resp.get_data(as_text=True)
    assert "train&#45;data" in pictures["train"] and "val&#45;data" not in pictures["train"]
    assert "val&#45;data" in pictures["val"] and "train&#45;data" not in pictures["val"]
    assert "softmax" in pictures["deploy"] and "train&#45;data" not in pictures["deploy"]
    assert "train&#45;data" in pictures[""] and "val&#45;data" in pictures[""]
    bad = c.post("/networks/visualize", data={"csrf_token": token, "network_text": LENET, "stage": "test"},
                 headers={"Accept": "application/json"})
    assert bad.status_code == 400 and bad.get_json()["details"][0]["field"] == "stage"
    job = site.source_job
    svg = c.get(f"/jobs/{job}/network.svg?stage=deploy").get_data(as_text=True)
    assert "softmax" in svg and "loss" not in svg
    page = c.get(f"/jobs/{job}").get_data(as_text=True)
    for stage in ("train", "val", "deploy"):
        assert f"/jobs/{job}/network.svg?stage={stage}" in page


# ---- a layer file no layer uses ------------------------------------------------------------------


def test_unused_layer_file_is_a_warning_in_the_api(site):
    report = post(site.client, "/api/v1/validate", network=LENET, layer_name="my_layers.py").get_json()
    assert report["ok"] is True and report["errors"] == []
    unused = [w for w in report["warnings"] if w.get("stage") == "unused"]
    assert len(unused) == 1 and unused[0]["field"] == "python_layer"
    assert unused[0]["message"].startswith("No layer of this network uses my_layers.py "
                                           "(stored as digits_python_layers.py); it was not run.")
    # A job made so: its page says the same under Validation.
    job = post(site.client, "/api/v1/jobs", network=LENET, layer_name="my_layers.py", max_iter=1).get_json()
    page = site.client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert 'data-stage="unused"' in page and "No layer of this network uses my_layers.py" in page
    # The seed network's Python layer uses its file: no such warning on its job's page.
    page = site.client.get(f"/jobs/{site.source_job}").get_data(as_text=True)
    assert "<h2>Validation</h2>" in page and 'data-stage="unused"' not in page


# ---- health, datasets ------------------------------------------------------------------------------


def test_health_page_for_people_and_json_for_machines(site):
    html = site.admin.get("/health").get_data(as_text=True)
    assert '<span class="status done" id="health-status">ok</span>' in html
    for row in ("health-selftest", "health-caffe", "health-containment", "health-disk", "health-queue"):
        assert f'id="{row}"' in html
    assert "MiB free" in html and "a real contained validation" not in html   # no self-test ran here: says so
    assert "not run" in html.split('id="health-selftest"', 1)[1].split("</tr>", 1)[0]
    viewer = site.client.get("/health").get_data(as_text=True)   # not an admin: the status, not the host
    assert 'id="health-status">ok<' in viewer and 'id="health-admin-only"' in viewer
    assert 'id="health-containment"' not in viewer
    assert site.admin.get("/healthz").get_json()["containment"]            # the JSON stays
    assert 'href="/health"' in viewer and 'href="/datasets"' in viewer     # both in the menu


# ---- in Chromium ------------------------------------------------------------------------------------


def _csrf(client, path: str) -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_datasets):
    """The app over HTTP, users "viewer" and "boss" (admin), one job of
    viewer's made through the API (validated, left queued) to clone, and a
    second ready dataset of viewer's."""
    from werkzeug.serving import make_server
    app = make_app(tmp_path_factory.mktemp("pages_more"), sample_datasets)
    client = client_for(app, "viewer", password=PASSWORD)
    admin = client_for(app, "boss", admin=True)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_port}"
    source = api(url, client.token, "POST", "/api/v1/jobs", {
        "network": ("lenet_seed.prototxt", LENET_SEED.encode()),
        "python_layer": ("my_layers.py", SEED_LAYER.encode()),
        "dataset": (None, b"sample-digits"), "max_iter": (None, b"7"), "learning_rate": (None, b"0.02"),
        "random_seed": (None, b"5"), "batch_size": (None, b"16"), "momentum": (None, b"0.8"),
        "shuffle": (None, b"true"), "name": (None, b"to be cloned")})
    store = app.extensions["store"]
    ws = app.extensions["ctx"].ws
    shutil.copytree(ws.dataset_dir("sample-digits"), ws.dataset_dir("viewer-digits"))
    info = dict(store.get_dataset("sample-digits")["info"], name="viewer digits")
    store.upsert_dataset("viewer-digits", name="viewer digits", owner="viewer", status="done", info=info)
    yield SimpleNamespace(app=app, url=url, client=client, admin=admin, store=store, source_job=source["id"])
    srv.shutdown()
    thread.join(10)
    store.engine.dispose()


@pytest.fixture(scope="module")
def driver(site, tmp_path_factory):
    """One headless Chromium for the module, signed in as viewer."""
    drv = chrome(tmp_path_factory.mktemp("chrome"), size="1280,1000")
    sign_in(drv, site.url, "viewer", PASSWORD)
    yield drv
    drv.quit()


def _wait(fn, timeout: float = 20.0):
    return wait_in_browser(fn, timeout=timeout, every=0.1)


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(lambda: driver.execute_script("return document.readyState") == "complete")


def _no_script_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert errors == [], errors


def _shot(driver, name: str) -> None:
    """A screenshot into $LAYERBENCH_SCREENSHOTS when set (the README's pictures)."""
    import os
    from pathlib import Path
    if os.environ.get("LAYERBENCH_SCREENSHOTS"):
        folder = Path(os.environ["LAYERBENCH_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(folder / f"{name}.png"))


def _picture(driver, img_id: str) -> str:
    """The SVG an <img> of the form shows (its data: URL decoded), or ""."""
    src = driver.find_element("id", img_id).get_attribute("src") or ""
    return base64.b64decode(src.split(",", 1)[1]).decode() if src.startswith("data:image/svg+xml;base64,") else ""


def _jobs(site) -> set[str]:
    return {j["id"] for j in site.client.get("/api/v1/jobs").get_json()["jobs"]}


def test_validate_redraws_the_picture_and_says_the_layer_file_is_unused(site, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    layer = tmp_path / "my_layers.py"
    layer.write_text(SEED_LAYER)
    driver.get_log("browser")
    _open(driver, site.url + "/jobs/new")
    Select(driver.find_element(By.ID, "standard_network")).select_by_value("lenet")
    driver.find_element(By.ID, "python_layer").send_keys(str(layer))
    driver.find_element(By.ID, "max_iter").send_keys("2")
    driver.find_element(By.ID, "visualize").click()
    train = _wait(lambda: _picture(driver, "netgraph"))
    assert "train&#45;data" in train and "val&#45;data" not in train
    assert not driver.find_element(By.ID, "netgraph-val").is_displayed()
    driver.find_element(By.ID, "netgraph-tab-val").click()
    assert driver.find_element(By.ID, "netgraph-val").is_displayed() and not driver.find_element(By.ID, "netgraph").is_displayed()
    assert "val&#45;data" in _picture(driver, "netgraph-val") and "train&#45;data" not in _picture(driver, "netgraph-val")

    # Customize, change the network, Validate: the report warns, the picture is the new network's.
    driver.find_element(By.ID, "customize").click()
    text = driver.find_element(By.ID, "network_text")
    _wait(lambda: "conv1" in text.get_attribute("value"))
    text.send_keys(" ")   # a keystroke: the picture shown is now marked out of date
    _wait(lambda: driver.find_element(By.ID, "netgraph-stale").is_displayed())
    driver.execute_script("arguments[0].value = arguments[0].value.replace(/conv1/g, 'features1');", text)
    drawn = driver.find_element(By.ID, "netgraph-box").get_attribute("data-drawn")
    driver.find_element(By.ID, "validate").click()
    heading = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#report h2"), timeout=120)[0]
    assert heading.text == "Valid, but no layer uses the Python layer file."
    warning = driver.find_element(By.CSS_SELECTOR, '#report-warnings li[data-stage="unused"]')
    assert "No layer of this network uses my_layers.py" in warning.text and "it was not run" in warning.text
    _wait(lambda: driver.find_element(By.ID, "netgraph-box").get_attribute("data-drawn") != drawn)
    val = _picture(driver, "netgraph-val")
    assert "features1" in val and ">conv1<" not in val
    assert "features1" in _picture(driver, "netgraph") and "features1" in _picture(driver, "netgraph-all")
    assert not driver.find_element(By.ID, "netgraph-stale").is_displayed()
    driver.execute_script("document.getElementById('netgraph-area').scrollIntoView()")
    _shot(driver, "new-job-validated-1280")
    _no_script_errors(driver)


def test_clone_opens_the_filled_in_form_and_carries_the_files(site, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    source = site.source_job
    before = _jobs(site)
    _open(driver, f"{site.url}/jobs/{source}")
    driver.find_element(By.ID, "btn-clone").click()
    _wait(lambda: "/jobs/new" in driver.current_url)
    assert urllib.parse.urlsplit(driver.current_url).query == f"clone={source}"
    assert _jobs(site) == before                       # nothing queued by opening it

    def value(field_id: str) -> str:
        return driver.find_element(By.ID, field_id).get_attribute("value")
    assert value("name") == "to be cloned (clone)"
    assert (value("max_iter"), value("learning_rate"), value("random_seed"), value("batch_size")) == ("7", "0.02", "5", "16")
    assert Select(driver.find_element(By.ID, "dataset")).first_selected_option.get_attribute("value") == "sample-digits"
    assert value("standard_network") == ""
    assert value("network_text").replace("\r\n", "\n").strip() == LENET_SEED.strip()
    assert driver.find_element(By.ID, "shuffle").is_selected()
    carried = driver.find_element(By.ID, "clone-files")
    assert "my_layers.py" in carried.text and "to be cloned" in carried.text
    assert carried.find_element(By.NAME, "clone_from").is_selected()
    assert "to be cloned" in driver.find_element(By.ID, "clone-note").text
    _shot(driver, "clone-form-1280")

    # Change a field, keep the carried layer file, Create.
    driver.find_element(By.ID, "name").clear()
    driver.find_element(By.ID, "name").send_keys("the clone")
    driver.find_element(By.ID, "max_iter").clear()
    driver.find_element(By.ID, "max_iter").send_keys("3")
    driver.find_element(By.ID, "create").click()
    _wait(lambda: "/jobs/new" not in driver.current_url, timeout=120)
    new_id = driver.current_url.rstrip("/").rsplit("/", 1)[1]
    assert new_id not in before and driver.find_element(By.TAG_NAME, "h1").text == "the clone"
    job = site.client.get(f"/api/v1/jobs/{new_id}").get_json()
    assert job["python_layer"]["original_filename"] == "my_layers.py"
    params = site.store.get_job(new_id)["params"]
    assert params["max_iter"] == 3 and params["learning_rate"] == 0.02 and params["random_seed"] == 5
    assert params["momentum"] == 0.8 and params["shuffle"] is True       # one the form has no field for, too
    assert params["network_filename"] == "lenet_seed.prototxt"            # the network unchanged: its name kept
    _no_script_errors(driver)


def test_a_file_chosen_in_the_clone_form_replaces_the_jobs(site):
    import io
    c = site.client
    html = c.get(f"/jobs/new?clone={site.source_job}").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    data = {"csrf_token": token, "action": "create", "clone_from": site.source_job, "network_text": LENET_SEED,
            "dataset": "sample-digits", "max_iter": "2", "name": "replaced layer", "solver_type": "SGD",
            "lr_policy": "fixed", "device": "cpu", "use_mean": "image", "gradient_check": "warn",
            "python_layer": (io.BytesIO(SEED_LAYER.encode()), "other_layers.py")}
    resp = c.post("/jobs/new", data=data, content_type="multipart/form-data")
    assert resp.status_code == 303, resp.get_data(as_text=True)[:2000]
    job = c.get(resp.headers["Location"].replace("/jobs/", "/api/v1/jobs/")).get_json()
    assert job["python_layer"]["original_filename"] == "other_layers.py"
    # Another user cannot clone viewer's job into a form (nor learn it exists).
    assert site.admin.get(f"/jobs/new?clone={site.source_job}").status_code == 200   # an admin sees every job
    outsider = client_for(site.app, "outsider")
    assert outsider.get(f"/jobs/new?clone={site.source_job}").status_code == 404


def test_train_on_this_dataset_and_the_menu(site, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    _open(driver, site.url + "/")
    driver.find_element(By.ID, "nav-datasets").click()
    _wait(lambda: driver.current_url.endswith("/datasets"))
    assert driver.find_element(By.TAG_NAME, "h1").text == "Datasets"
    driver.find_element(By.LINK_TEXT, "viewer digits").click()
    _wait(lambda: driver.current_url.endswith("/datasets/viewer-digits"))
    driver.find_element(By.ID, "btn-train").click()
    _wait(lambda: "/jobs/new" in driver.current_url)
    chosen = Select(driver.find_element(By.ID, "dataset")).first_selected_option
    assert chosen.get_attribute("value") == "viewer-digits"   # not the first one listed (sample-digits)
    driver.find_element(By.ID, "nav-health").click()
    _wait(lambda: driver.current_url.endswith("/health"))
    assert driver.find_element(By.ID, "health-status").text == "ok"
    assert driver.find_element(By.TAG_NAME, "h1").text == "Health"
    _shot(driver, "health-viewer-1280")
    _no_script_errors(driver)


# ---- smaller (item 11): the layer environment's split and search; classify shows the image --------------


def test_layer_environment_lists_what_layers_need_first_with_a_search(site, driver):
    from selenium.webdriver.common.by import By
    _open(driver, site.url + "/layer-env")

    def row(table: str, name: str):
        found = driver.find_elements(By.CSS_SELECTOR, f'#{table} tr[data-name="{name}"]')
        return found[0] if found else None
    assert row("packages-for-layers", "numpy") and row("packages-for-layers", "scipy")
    assert row("packages-other", "gunicorn") and row("packages-other", "pytest") and row("packages-other", "selenium")
    assert not row("packages-for-layers", "pytest") and not row("packages-other", "numpy")
    assert not row("packages-other", "gunicorn").is_displayed()          # the rest folded away
    search = driver.find_element(By.ID, "package-search")
    search.send_keys("selen")
    _wait(lambda: row("packages-other", "selenium").is_displayed())     # opened: the match is there
    _shot(driver, "layer-env-search-1280")
    assert not row("packages-for-layers", "numpy").is_displayed() and not row("packages-other", "pytest").is_displayed()
    search.clear()
    search.send_keys("no-such-package")
    _wait(lambda: driver.find_element(By.ID, "package-search-none").is_displayed())
    search.send_keys("\b" * 40)
    _wait(lambda: row("packages-for-layers", "numpy").is_displayed())
    _no_script_errors(driver)


@pytest.fixture(scope="module")
def trained(site) -> str:
    """A job of viewer's trained for 2 iterations (the module's other jobs
    aborted first: nothing else needs to train); its id."""
    from helpers import InProcessWorker, wait_for
    for j in site.client.get("/api/v1/jobs").get_json()["jobs"]:
        if j["status"] == "queued":
            site.client.post(f"/api/v1/jobs/{j['id']}/abort")
    job = post(site.client, "/api/v1/jobs", max_iter=2, snapshot_interval=1, name="to classify with").get_json()
    worker = InProcessWorker(site.app)
    try:
        assert wait_for(site.client, job["id"], {"done", "error"}, timeout=180)["status"] == "done"
    finally:
        worker.stop()
    return job["id"]


def test_classify_result_shows_each_image(site, driver, trained):
    from selenium.webdriver.common.by import By
    sample = sorted((site.app.extensions["ctx"].ws.dataset_dir("sample-digits") / "samples").glob("*.png"))[0]
    _open(driver, f"{site.url}/jobs/{trained}")
    driver.find_element(By.ID, "image").send_keys(str(sample))
    driver.find_element(By.ID, "btn-infer").click()
    img = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#predictions img.classified"), timeout=120)[0]
    assert img.get_attribute("alt") == sample.name
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    assert driver.find_elements(By.CSS_SELECTOR, "#predictions ol.top li strong")   # and its predictions
    _shot(driver, "classified-1280")
    _no_script_errors(driver)
