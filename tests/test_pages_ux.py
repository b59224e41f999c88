"""The pages a user lives in (issue 25): charts that survive a NaN, Delete
that asks first, a refused Create that keeps the chosen files, 404s that say
what was not found, and pages that fit a 390 px phone.

One app for the module, served over real HTTP (threads: an event stream
holds one) with a real worker, and one headless Chromium shared by the
browser tests. The worker trains one real job whose Python layer turns the
loss into NaN after 12 iterations; it is submitted when the module starts
and the tests that need it wait for it to end. Other jobs are written
straight into the store and the jobs directory, as the worker leaves them."""
from __future__ import annotations

import http.client
import json
import threading
import time
from types import SimpleNamespace

import pytest

from app.core.workspace import METRICS_FILE
from helpers import InProcessWorker, LENET_SEED, SEED_LAYER, api, chrome, client_for, make_app, sign_in, wait_in_browser

PASSWORD = "pw-for-pages-ux"
NAN_AFTER = 12   # the diverging layer's loss is NaN from iteration NAN_AFTER + 1

# LeNet whose train net passes ip2 through a Python layer that, from its
# 13th forward pass, fills it with NaN: Caffe's loss becomes NaN there.
DIVERGE_LAYER = '''
layer {
  name: "diverge"
  type: "Python"
  bottom: "ip2"
  top: "ip2"
  python_param { module: "digits_python_layers" layer: "Diverge" param_str: "%d" }
  include { stage: "train" }
}
''' % NAN_AFTER
DIVERGE_NET = LENET_SEED.replace('layer {\n  name: "loss"', DIVERGE_LAYER.lstrip() + 'layer {\n  name: "loss"', 1)
DIVERGE_SOURCE = SEED_LAYER + '''

import numpy as np


class Diverge(caffe.Layer):
    """In place: its bottom unchanged for param_str forward passes, then NaN."""

    def setup(self, bottom, top):
        self.after, self.calls = int(self.param_str), 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls += 1
        if self.calls > self.after:
            top[0].data[...] = np.nan

    def backward(self, top, propagate_down, bottom):
        pass
'''


def _strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as browsers do."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_datasets):
    """The app over HTTP, user "viewer", a worker, and the diverging job submitted."""
    from werkzeug.serving import make_server
    app = make_app(tmp_path_factory.mktemp("pages_ux"), sample_datasets)
    client = client_for(app, "viewer", password=PASSWORD)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_port}"
    worker = InProcessWorker(app)
    diverging = api(url, client.token, "POST", "/api/v1/jobs", {
        "network": ("lenet_diverge.prototxt", DIVERGE_NET.encode()),
        "python_layer": ("diverge_layers.py", DIVERGE_SOURCE.encode()),
        "dataset": (None, b"sample-digits"), "max_iter": (None, b"40"), "random_seed": (None, b"1"),
        "name": (None, b"diverges at 13")})
    yield SimpleNamespace(app=app, url=url, client=client, token=client.token, store=app.extensions["store"],
                          ctx=app.extensions["ctx"], diverging_id=diverging["id"])
    worker.stop()
    srv.shutdown()
    thread.join(10)
    app.extensions["store"].engine.dispose()


@pytest.fixture(scope="module")
def diverged(site) -> dict:
    """The real diverging job, ended (its JSON)."""
    deadline = time.monotonic() + 240
    while True:
        job = site.client.get(f"/api/v1/jobs/{site.diverging_id}").get_json()
        if job["status"] in ("done", "error", "aborted", "interrupted"):
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["status"] == "error", job
    assert f"became nan at iteration {NAN_AFTER + 1}" in job["error"]["message"], job["error"]
    return job


def _job_with_metrics(site, name: str, records: list[dict], status: str = "done") -> str:
    """A job of viewer's as the worker leaves one: its record and metrics.jsonl
    (written as app/contained/train.py does, NaN and Infinity included)."""
    job_id = site.store.insert_job(name=name, owner="viewer", device="cpu", params={}, max_iter=100)["id"]
    site.ctx.ws.create_job(job_id)
    path = site.ctx.ws.output_dir(job_id) / METRICS_FILE
    with open(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps({**rec, "run": 1}) + "\n")
    last: dict = {}   # the job's latest train and val values, as the worker keeps them
    for rec in records:
        if rec["type"] in ("train", "val"):
            last[rec["type"]] = {k: v for k, v in rec.items() if k not in ("type", "iteration", "epoch")}
    site.store.update_job(job_id, status=status, progress=1.0 if status == "done" else 0.5,
                          iteration=records[-1]["iteration"] if records else 0, metrics=last)
    return job_id


def _curve(n: int, bad_at: int | None = None, bad=float("nan")) -> list[dict]:
    out = []
    for it in range(1, n + 1):
        loss = bad if bad_at is not None and it >= bad_at else 2.5 - it * 0.05
        out.append({"type": "train", "iteration": it, "epoch": it / 10, "loss": loss})
        out.append({"type": "lr", "iteration": it, "epoch": it / 10, "lr": 0.01})
        out.append({"type": "clock", "iteration": it, "time": 1000.0 + it})
        if it % 5 == 0:
            out.append({"type": "val", "iteration": it, "epoch": it / 10, "loss": 2.0 - it * 0.04,
                        "accuracy": min(1.0, it * 0.05)})
    return out


# ---- plain HTTP: strict JSON and 404s ------------------------------------------------------------


def test_every_json_answer_about_a_diverged_job_is_strict_json(site):
    """/metrics, the job JSON, the comparison, DIGITS's model JSON and the
    event stream: NaN and ±Infinity arrive as null, the finite points as they were."""
    job_id = _job_with_metrics(site, "nan then inf", _curve(6, bad_at=4) + [
        {"type": "val", "iteration": 6, "epoch": 0.6, "loss": float("inf"), "accuracy": float("-inf")}],
        status="error")
    c = site.client
    raw = c.get(f"/api/v1/jobs/{job_id}/metrics").get_data(as_text=True)
    body = _strict(raw)
    assert [p["loss"] for p in body["train"]] == [2.45, 2.4, 2.35, None, None, None]
    assert body["val"][-1] == {"iteration": 6, "epoch": 0.6, "loss": None, "accuracy": None}
    assert body["lr"][0]["lr"] == 0.01
    job = _strict(c.get(f"/api/v1/jobs/{job_id}").get_data(as_text=True))
    assert job["metrics"]["train"]["loss"] is None and job["metrics"]["val"]["accuracy"] is None
    listing = _strict(c.get("/api/v1/jobs").get_data(as_text=True))
    assert any(j["id"] == job_id for j in listing["jobs"])
    compared = _strict(c.get(f"/api/v1/jobs/compare?ids={job_id}").get_data(as_text=True))
    assert [p["value"] for p in compared["jobs"][0]["series"]["train loss"]] == [2.45, 2.4, 2.35, None, None, None]
    _strict(c.get(f"/models/{job_id}.json").get_data(as_text=True))
    _strict(c.get("/index.json").get_data(as_text=True))
    # The compare page embeds the same data for its chart.
    page = c.get(f"/jobs/compare?ids={job_id}").get_data(as_text=True)
    embedded = page.split('<script type="application/json" id="compare-data">', 1)[1].split("</script>", 1)[0]
    assert _strict(embedded)["jobs"][0]["final"]["train loss"] is None

    # The event stream (an ended job's: it replays everything, then ends).
    host, port = site.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/api/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {site.token}"})
    events = conn.getresponse().read().decode()
    conn.close()
    datas = [line[6:] for line in events.splitlines() if line.startswith("data: ")]
    parsed = [_strict(d) for d in datas]   # every event, status included
    metrics = [r for d in parsed if isinstance(d, list) for r in d]
    assert [r["loss"] for r in metrics if r.get("type") == "train"] == [2.45, 2.4, 2.35, None, None, None]
    status = next(d for d in parsed if isinstance(d, dict) and "metrics" in d)
    assert status["metrics"]["val"]["loss"] is None


def test_404s_say_what_was_not_found(site):
    c = site.client
    cases = {"/jobs/no-such-id": "No such job.", "/datasets/no-such-id": "No such dataset.",
             "/no/such/page": "No such page.", "/networks/nope.prototxt": "No such standard network.",
             "/datasets/sample-digits/files/nope.png": "No such dataset preview image."}
    for path, heading in cases.items():
        resp = c.get(path, headers={"Accept": "text/html"})
        html = resp.get_data(as_text=True)
        assert resp.status_code == 404, path
        assert f'<h1 id="error-heading">{heading}</h1>' in html, (path, html)
        assert "requested URL was not found" not in html and "not_found" not in html
        assert f"<code>{path}</code>" in html
    assert c.get("/api/v1/nope").get_json() == {"error": "not_found", "message": "No such API route.",
                                                "details": []}
    assert c.get("/api/v1/jobs/nope").get_json()["message"] == "No such job."
    digits = c.get("/jobs/no-such-id/status", headers={"Accept": "application/json"})   # DIGITS
    assert digits.status_code == 404 and digits.get_json()["message"] == "No such job or dataset."
    # A dataset's id under /jobs/ still opens the dataset's page (DIGITS's links).
    assert c.get("/jobs/sample-digits").headers["Location"].endswith("/datasets/sample-digits")


def test_refused_create_without_script_names_the_files_to_choose_again(site):
    """The form posted without its script (a full page load) cannot keep the
    chosen files: the page sent back says which ones to choose again."""
    import io

    from helpers import csrf_token_of as _csrf, new_job_form as _form
    c = site.client
    data = _form(_csrf(c, "/jobs/new"), "create", network=(io.BytesIO(b"layer { nonsense"), "broken.prototxt"),
                 python_layer=(io.BytesIO(SEED_LAYER.encode()), "my_accuracy.py"))
    resp = c.post("/jobs/new", data=data, content_type="multipart/form-data")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    para = html.split('id="choose-again"', 1)[1].split("</p>", 1)[0]
    assert "network file <code>broken.prototxt</code>" in para
    assert "Python layer file <code>my_accuracy.py</code>" in para
    assert 'id="choose-again"' not in c.get("/jobs/new").get_data(as_text=True)


# ---- in Chromium ------------------------------------------------------------------------------------


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


def _chart(driver, canvas: str) -> dict:
    """{dataset label: [[x, y], ...]} of a chart (y null where not drawn)."""
    return driver.execute_script(
        "var c = Chart.getChart(document.getElementById(arguments[0])), r = {};"
        "c.data.datasets.forEach(function (d) { r[d.label] = d.data.map(function (p) { return [p.x, p.y]; }); });"
        "return r;", canvas)


def _shot(driver, name: str) -> None:
    """A screenshot into $LAYERBENCH_SCREENSHOTS when set (the README's pictures)."""
    import os
    from pathlib import Path
    if os.environ.get("LAYERBENCH_SCREENSHOTS"):
        folder = Path(os.environ["LAYERBENCH_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(folder / f"{name}.png"))


def _no_script_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert errors == [], errors


def test_diverged_job_page_draws_the_finite_points_and_marks_the_nan(site, driver, diverged):
    from selenium.webdriver.common.by import By
    driver.get_log("browser")
    _open(driver, f"{site.url}/jobs/{diverged['id']}")
    bad = NAN_AFTER + 1

    def drawn():
        out = _chart(driver, "chart-outputs")
        return out if len(out.get("train loss", [])) >= bad else None
    out = _wait(drawn)
    loss = out["train loss"]
    finite = [y for _x, y in loss if y is not None]
    assert len(finite) == NAN_AFTER and all(isinstance(y, (int, float)) for y in finite)
    assert loss[NAN_AFTER][1] is None            # the NaN: a gap, not a point
    marker = [k for k in out if k.startswith("train loss: NaN at iteration")]
    assert marker == [f"train loss: NaN at iteration {bad}"]
    assert out[marker[0]] == [[loss[NAN_AFTER][0], finite[-1]]]   # at the NaN, level with the last point
    flag = driver.find_element(By.ID, "chart-flag")
    assert flag.is_displayed() and f"“train loss” became NaN or infinite at iteration {bad}" in flag.text
    # The learning rate stays drawn; the axis starts at 0 (a constant rate is a flat line).
    assert len(_chart(driver, "chart-lr")["learning rate"]) >= bad
    assert driver.execute_script("return Chart.getChart(document.getElementById('chart-lr')).scales.y.min") == 0
    assert "became nan at iteration" in driver.find_element(By.ID, "error-message").text
    _shot(driver, "job-diverged-1280")
    # The summary: how long it took, how fast, when it ended, the main metric's last and best.
    text = {k: driver.find_element(By.ID, k).text for k in ("elapsed-label", "elapsed", "speed", "eta-label", "eta",
                                                            "headline-label", "headline")}
    assert text["elapsed-label"] == "Took" and text["elapsed"].endswith(" s"), text
    assert text["speed"].endswith(" per epoch") and " it/s · " in text["speed"], text
    assert text["eta-label"] == "Ended" and text["eta"].endswith(" UTC"), text
    if "val accuracy" in out:
        assert text["headline-label"] == "val accuracy"
    else:   # no validation before it diverged: the training loss, its last value the NaN
        best = min(finite)
        assert text["headline-label"] == "train loss", text
        assert text["headline"].startswith(f"last NaN (iteration {bad}) · best "), text
        assert f"(iteration {1 + [y for _x, y in loss].index(best)})" in text["headline"], text
    _no_script_errors(driver)


def test_compare_page_draws_every_job_when_one_diverged(site, driver, diverged):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    healthy = _job_with_metrics(site, "healthy", _curve(20))
    _open(driver, f"{site.url}/jobs/compare?ids={healthy},{diverged['id']}")
    Select(driver.find_element(By.ID, "metric")).select_by_value("train loss")
    Select(driver.find_element(By.ID, "axis")).select_by_value("iteration")
    out = _wait(lambda: (c := _chart(driver, "chart-compare")) and "healthy" in c and c)
    _shot(driver, "compare-diverged-1280")
    assert [y for _x, y in out["healthy"]] == [2.5 - it * 0.05 for it in range(1, 21)]
    gone = out["diverges at 13"]
    assert [y is None for _x, y in gone].index(True) == NAN_AFTER
    assert out[f"diverges at 13: NaN at iteration {NAN_AFTER + 1}"][0][0] == NAN_AFTER + 1
    assert f"diverges at 13 became NaN or infinite at iteration {NAN_AFTER + 1}" in \
        driver.find_element(By.ID, "compare-flags").text
    _no_script_errors(driver)


def test_job_charts_keep_colours_by_series_name_and_give_accuracy_its_own_axis(site, driver):
    """Whatever order the series arrive in, a name keeps its colour; losses
    share the left axis, accuracy has the right-hand one."""
    # The same records, but each val record names its accuracy before its loss.
    accuracy_first = [{"type": r["type"], "iteration": r["iteration"], "epoch": r["epoch"], "accuracy": r["accuracy"],
                       "loss": r["loss"]} if r["type"] == "val" else r for r in _curve(10)]
    seen = []
    for records in (_curve(10), accuracy_first):
        _open(driver, f"{site.url}/jobs/{_job_with_metrics(site, 'colours', records)}")
        seen.append(_wait(lambda: driver.execute_script(
            "var c = Chart.getChart(document.getElementById('chart-outputs')), r = {};"
            "c.data.datasets.forEach(function (d) { r[d.label] = [d.borderColor, d.yAxisID, d.data.length]; });"
            "return Object.keys(r).length === 3 && r['train loss'][2] === 10 ? "
            "  [c.data.datasets.map(function (d) { return d.label; }), r, c.options.scales.y.title.text,"
            "   c.options.scales.y1.title.text] : null;")))
    (order1, by1, left, right), (order2, by2, _l, _r) = seen
    assert order1 != order2                        # arrived in another order...
    assert by1 == by2                              # ...same colours, same axes
    assert by1["train loss"][1] == by1["val loss"][1] == "y" and by1["val accuracy"][1] == "y1"
    assert len({v[0] for v in by1.values()}) == 3
    assert (left, right) == ("loss", "accuracy")


def test_delete_asks_first_and_a_dismissed_dialog_keeps_the_job(site, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    job_id = _job_with_metrics(site, "to delete", _curve(5))
    site.store.update_job(job_id, snapshots=[{"iteration": 3, "epoch": 0.3}, {"iteration": 5, "epoch": 0.5}])
    page = f"{site.url}/jobs/{job_id}"
    _open(driver, page)
    dialog = driver.find_element(By.ID, "confirm-delete")
    assert not dialog.is_displayed()

    def gone() -> bool:
        return site.client.get(f"/api/v1/jobs/{job_id}").status_code == 404

    driver.find_element(By.ID, "btn-delete").click()
    _wait(dialog.is_displayed)
    assert "its 2 snapshots" in dialog.text and "iterations 3 to 5" in dialog.text
    assert "model download" in dialog.text
    driver.find_element(By.ID, "confirm-delete-cancel").click()          # "Keep the job"
    _wait(lambda: not dialog.is_displayed())
    driver.find_element(By.ID, "btn-delete").click()
    _wait(dialog.is_displayed)
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)      # Escape, too
    _wait(lambda: not dialog.is_displayed())
    time.sleep(0.5)
    assert driver.current_url == page and not gone()
    assert site.ctx.ws.job_dir(job_id).is_dir()

    driver.find_element(By.ID, "btn-delete").click()
    _wait(dialog.is_displayed)
    driver.find_element(By.ID, "confirm-delete-ok").click()
    _wait(lambda: driver.current_url.rstrip("/") == site.url)
    assert "Deleted job to delete." in driver.find_element(By.CSS_SELECTOR, ".flash").text
    assert gone() and not site.ctx.ws.job_dir(job_id).exists()


def test_refused_create_keeps_the_chosen_files(site, driver, tmp_path):
    from selenium.webdriver.common.by import By
    broken = tmp_path / "broken.prototxt"
    broken.write_text("layer { nonsense")
    layer = tmp_path / "my_accuracy.py"
    layer.write_text(SEED_LAYER)
    _open(driver, site.url + "/jobs/new")
    driver.find_element(By.ID, "network").send_keys(str(broken))
    driver.find_element(By.ID, "python_layer").send_keys(str(layer))
    driver.find_element(By.ID, "name").send_keys("refused")
    before = {j["id"] for j in site.client.get("/api/v1/jobs").get_json()["jobs"]}
    driver.find_element(By.ID, "create").click()
    errors = _wait(lambda: driver.find_elements(By.ID, "errors"))[0]
    assert "network" in errors.text.lower()
    assert driver.current_url.endswith("/jobs/new")
    assert driver.find_element(By.ID, "network").get_attribute("value").endswith("broken.prototxt")
    assert driver.find_element(By.ID, "python_layer").get_attribute("value").endswith("my_accuracy.py")
    assert driver.find_element(By.ID, "name").get_attribute("value") == "refused"
    assert driver.find_element(By.ID, "create").text == "Create job" and driver.find_element(By.ID, "create").is_enabled()
    assert {j["id"] for j in site.client.get("/api/v1/jobs").get_json()["jobs"]} == before


def test_create_from_the_form_still_opens_the_new_job(site, driver, tmp_path):
    """Create posts in the background now: a job it makes still opens its page."""
    from selenium.webdriver.common.by import By
    net = tmp_path / "lenet.prototxt"
    net.write_text(LENET_SEED)
    layer = tmp_path / "accuracy.py"
    layer.write_text(SEED_LAYER)
    _open(driver, site.url + "/jobs/new")
    driver.find_element(By.ID, "network").send_keys(str(net))
    driver.find_element(By.ID, "python_layer").send_keys(str(layer))
    driver.find_element(By.ID, "max_iter").send_keys("1")
    driver.find_element(By.ID, "name").send_keys("made by the form")
    driver.find_element(By.ID, "create").click()
    _wait(lambda: "/jobs/new" not in driver.current_url, timeout=120)
    assert driver.find_element(By.TAG_NAME, "h1").text == "made by the form"


PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


def _overflowing(driver) -> list[str]:
    """The elements that stick out past the viewport's right edge (for the message)."""
    return driver.execute_script(
        "var w = document.documentElement.clientWidth, out = [];"
        "document.querySelectorAll('body *').forEach(function (el) {"
        "  var r = el.getBoundingClientRect();"
        "  if (r.width && r.right > w + 0.5 && !el.closest('.table-scroll, pre, dialog:not([open])')) "
        "    out.push(el.tagName + (el.id ? '#' + el.id : '') + '.' + el.className + ' ' + Math.round(r.right));"
        "}); return out.slice(0, 15);")


def test_no_page_scrolls_sideways_on_a_phone(site, driver, diverged):
    from selenium.webdriver.common.by import By
    healthy = _job_with_metrics(site, "a job with a rather long name for a phone screen", _curve(10))
    pages = {"job list": "/", "job page": f"/jobs/{diverged['id']}", "new-job form": "/jobs/new",
             "dataset page": "/datasets/sample-digits",
             "compare page": f"/jobs/compare?ids={healthy},{diverged['id']}"}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        for what, path in pages.items():
            _open(driver, site.url + path)
            if what == "job page":   # with its validation report's timing table, the widest
                _wait(lambda: len(_chart(driver, "chart-outputs").get("train loss", [])) > NAN_AFTER)
                assert driver.find_elements(By.CSS_SELECTOR, "table.timing-by-stage")
            _shot(driver, "phone-390-" + what.replace(" ", "-"))
            sizes = driver.execute_script("var d = document.documentElement; return [d.scrollWidth, d.clientWidth];")
            assert sizes[1] == 390, sizes
            assert sizes[0] <= sizes[1], (what, sizes, _overflowing(driver))
            if what == "job page":   # the charts take the full width
                width = driver.execute_script("return document.getElementById('chart-outputs').clientWidth")
                assert width >= 390 - 60, width
        # The header's links fold behind "Menu", each on one line when shown.
        nav, toggle = driver.find_element(By.ID, "site-nav"), driver.find_element(By.ID, "menu-toggle")
        assert toggle.is_displayed() and not nav.is_displayed()
        toggle.click()
        _wait(nav.is_displayed)
        assert toggle.get_attribute("aria-expanded") == "true"
        lines = driver.execute_script("return Array.prototype.map.call(document.querySelectorAll('#site-nav a'),"
                                      " function (a) { return a.getClientRects().length; })")
        heights = driver.execute_script("return Array.prototype.map.call(document.querySelectorAll('#site-nav a'),"
                                        " function (a) { return a.getBoundingClientRect().height; })")
        assert lines and all(n == 1 for n in lines) and max(heights) < 2 * min(heights), (lines, heights)
        assert driver.execute_script("var d = document.documentElement; return d.scrollWidth <= d.clientWidth")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    # Wide: no Menu button, the links in the header.
    _open(driver, site.url + "/")
    assert not driver.find_element(By.ID, "menu-toggle").is_displayed()
    assert driver.find_element(By.ID, "site-nav").is_displayed()
