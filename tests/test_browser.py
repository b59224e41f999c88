"""A person's path in real Chromium against the real server (gunicorn + worker):
open the form, customize LeNet, upload the seed layer, create, watch the
live page reach done with charts drawn from the Python layer's accuracy."""
from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

from helpers import DATA, browser_login as _login, wait_in_browser as _wait


def test_new_user_trains_seed_lenet_in_the_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, instance = server
    _login(browser, server, instance)
    Select(browser.find_element(By.ID, "standard_network")).select_by_value("lenet")
    browser.find_element(By.ID, "customize").click()
    text = _wait(lambda: browser.find_element(By.ID, "network_text").get_attribute("value"))
    assert 'name: "LeNet"' in text
    # Swap LeNet's Accuracy layer for the seed page's Python one, as a user would.
    browser.find_element(By.ID, "network_text").clear()
    browser.find_element(By.ID, "network").send_keys(str(DATA / "lenet_seed.prototxt"))
    browser.find_element(By.ID, "python_layer").send_keys(str(DATA / "seed_accuracy_layer.py"))
    browser.find_element(By.ID, "train_epochs").clear()
    browser.find_element(By.ID, "train_epochs").send_keys("2")
    browser.find_element(By.ID, "name").send_keys("browser lenet")
    browser.find_element(By.ID, "validate").click()
    report = _wait(lambda: browser.find_elements(By.ID, "report"))[0]
    assert "Valid: every layer built and ran." in report.text and "AccuracyLayer" in report.text
    assert "/jobs/new" in browser.current_url   # validated in place; the chosen files are still set
    assert browser.find_element(By.ID, "python_layer").get_attribute("value").endswith("seed_accuracy_layer.py")
    browser.find_element(By.ID, "create").click()

    _wait(lambda: "/jobs/" in browser.current_url and "new" not in browser.current_url)
    status = _wait(lambda: (s := browser.find_element(By.ID, "status").text) in ("done", "error") and s)
    assert status == "done"
    series = _wait(lambda: browser.execute_script(
        "var c = Chart.getChart(document.getElementById('chart-outputs'));"
        "var r = {}; c.data.datasets.forEach(function (d) { r[d.label] = d.data.length; });"
        "return r['val accuracy'] >= 2 ? r : null;"))
    assert series["train loss"] > 10 and series["val loss"] >= 2
    lr_points = browser.execute_script("return Chart.getChart(document.getElementById('chart-lr'))"
                                       ".data.datasets[0].data.length")
    assert lr_points > 10
    assert browser.find_element(By.ID, "progress-text").text == "100.0%"
    assert "Solver scaffolding done" in browser.find_element(By.ID, "log").text  # Caffe's own log, live
    assert not browser.find_element(By.ID, "btn-abort").is_displayed()
    history = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#history .status")]
    assert history[-1] == "done"
    lr_x = browser.execute_script("var d = Chart.getChart(document.getElementById('chart-lr'))"
                                  ".data.datasets[0].data; return d[d.length - 1].x")
    assert lr_x == 2.0   # plotted by epoch, like the outputs (whole iterations per epoch: exactly 2)
    rows = browser.find_elements(By.CSS_SELECTOR, "#snapshots tbody tr")
    assert len(rows) == 2   # epochs 1 and 2 (whole iterations per epoch: the last snapshot is epoch 2)
    shots = Path(os.environ.get("LAYERBENCH_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shots / "job-page.png"))
    href = browser.find_element(By.ID, "btn-download").get_attribute("href")
    creds = dict(line.split(": ", 1) for line in (instance / "initial-credentials.txt").read_text().splitlines())
    req = urllib.request.Request(href, headers={"Authorization": f"Bearer {creds['token']}"})
    with urllib.request.urlopen(req) as resp:
        assert resp.headers["Content-Type"] == "application/gzip" and len(resp.read()) > 100_000
    csp = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert csp == []


def test_whole_digits_round_in_the_browser(server, browser, tmp_path):
    """Images -> dataset -> LeNet + the seed's Python layer -> train -> classify."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from helpers import digit_pngs as _pngs, zip_of as _zip
    server, instance = server
    archive = tmp_path / "three_digits.zip"
    archive.write_bytes(_zip(_pngs(per_class=60), wrap="three_digits/"))
    held = tmp_path / "digit_2_held_out.png"
    held.write_bytes(_pngs(classes=(2,), per_class=70)["digit_2/065.png"])
    _login(browser, server, instance)

    browser.get(server + "/datasets/new")
    browser.find_element(By.ID, "name").send_keys("three digits")
    browser.find_element(By.ID, "archive").send_keys(str(archive))
    Select(browser.find_element(By.ID, "channels")).select_by_value("1")
    t0 = time.monotonic()
    browser.find_element(By.ID, "create-dataset").click()
    _wait(lambda: browser.find_element(By.ID, "status").text == "done", timeout=60, every=0.1)
    print(f"dataset built (browser view): {time.monotonic() - t0:.2f} s")
    assert "digit_2" in browser.page_source and len(browser.find_elements(By.CSS_SELECTOR, ".samples img")) == 18
    dataset_id = browser.find_element(By.ID, "dataset").get_attribute("data-dataset-id")

    browser.get(server + "/jobs/new")
    Select(browser.find_element(By.ID, "dataset")).select_by_value(dataset_id)
    browser.find_element(By.ID, "network").send_keys(str(DATA / "lenet_seed.prototxt"))
    browser.find_element(By.ID, "python_layer").send_keys(str(DATA / "seed_accuracy_layer.py"))
    browser.find_element(By.ID, "train_epochs").clear()
    browser.find_element(By.ID, "train_epochs").send_keys("10")
    browser.find_element(By.ID, "visualize").click()
    _wait(lambda: (browser.find_element(By.ID, "netgraph").get_attribute("src") or "").startswith("data:image/svg"),
          timeout=20)
    browser.find_element(By.ID, "create").click()
    _wait(lambda: (s := browser.find_element(By.ID, "status").text) in ("done", "error") and s, timeout=120)
    assert browser.find_element(By.ID, "status").text == "done"
    browser.refresh()   # the classify form appears once snapshots exist
    browser.find_element(By.ID, "image").send_keys(str(held))
    browser.find_element(By.ID, "btn-infer").click()
    first = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#predictions ol.top li strong"))[0]
    assert first.text == "digit_2"
    shots = Path(os.environ.get("LAYERBENCH_SCREENSHOTS", tmp_path))
    browser.save_screenshot(str(shots / "classified.png"))


def test_job_list_updates_live(server, browser):
    from selenium.webdriver.common.by import By
    from helpers import api as http_api
    server, instance = server
    creds = dict(line.split(": ", 1) for line in (instance / "initial-credentials.txt").read_text().splitlines())
    _login(browser, server, instance)

    def api(method: str, path: str, fields: dict | None = None):
        return http_api(server, creds["token"], method, path, fields)

    job = api("POST", "/api/v1/jobs", {
        "network": ("n.prototxt", (DATA / "lenet_seed.prototxt").read_bytes()),
        "python_layer": ("l.py", (DATA / "seed_accuracy_layer.py").read_bytes()),
        "dataset": (None, b"sample-digits"), "max_iter": (None, b"100000")})
    browser.get(server + "/")
    row = f'#jobs tr[data-job-id="{job["id"]}"]'
    _wait(lambda: browser.find_element(By.CSS_SELECTOR, row + " .status").text == "running", timeout=30)
    first = float(browser.find_element(By.CSS_SELECTOR, row + " progress").get_attribute("value"))
    _wait(lambda: float(browser.find_element(By.CSS_SELECTOR, row + " progress").get_attribute("value")) > first,
          timeout=30)
    api("POST", f"/api/v1/jobs/{job['id']}/abort")
    _wait(lambda: browser.find_element(By.CSS_SELECTOR, row + " .status").text == "aborted", timeout=30)
