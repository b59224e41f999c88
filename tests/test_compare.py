"""Comparing jobs: GET /api/v1/jobs/compare?ids=a,b and the page
/jobs/compare?ids=a,b — curves of real trainings overlaid (by epoch,
iteration or wall time), settings side by side with the differences marked,
network and layer file diffs, final metrics; and the one visibility rule: a
job the user may not see is a 404, as if it did not exist."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import LENET_SEED, SEED_LAYER, api, client_for, post
from helpers import browser_login as _login, wait_in_browser as _wait


CHANGED_LAYER = SEED_LAYER.replace("        # Renaming for clarity\n", "        # Renamed for the comparison\n")


def _submit(client, **fields) -> dict:
    resp = post(client, "/api/v1/jobs", **fields)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_compare_api_and_visibility(app, client):
    # A sweep: two jobs, one group, learning rates 0.01 and 0.05.
    resp = post(client, "/api/v1/jobs", name="lr", learning_rate="0.01,0.05")
    assert resp.status_code == 201, resp.get_json()
    a, b = resp.get_json()["jobs"]
    body = client.get(f"/api/v1/jobs/compare?ids={a['id']},{b['id']}").get_json()
    assert [j["id"] for j in body["jobs"]] == [a["id"], b["id"]]
    assert body["link"] == f"/jobs/compare?ids={a['id']},{b['id']}"
    settings = {row["name"]: row for row in body["settings"]}
    assert settings["learning_rate"] == {"name": "learning_rate", "values": [0.01, 0.05], "differs": True}
    assert settings["solver.base_lr"]["differs"] is True
    assert settings["dataset"]["differs"] is False and settings["python_layer"]["values"][0] == "AccuracyLayer"
    assert settings["group"]["differs"] is False and settings["group"]["values"][0] == "lr"
    # Same network and layer file (the layer diff of a changed file: the browser test).
    assert body["diffs"]["network"] == [{"job": b["id"], "same": True, "missing": False, "diff": ""}]
    assert body["diffs"]["python_layer"] == [{"job": b["id"], "same": True, "missing": False, "diff": ""}]
    assert body["jobs"][0]["series"] == {} and body["metrics"] == []    # nothing trained yet
    # The same data on the page, rendered; the job list links the sweep's comparison.
    html = client.get(f"/jobs/compare?ids={a['id']},{b['id']}").get_data(as_text=True)
    assert 'class="differs" data-setting="learning_rate"' in html and "identical" in html
    listing = client.get("/").get_data(as_text=True)
    group_ids = ",".join(resp.get_json()["group"]["jobs"])
    assert f'href="/jobs/compare?ids={group_ids}">compare</a>' in listing
    # The job list's form (ids=a&ids=b) lands on the shareable URL.
    resp = client.get(f"/jobs/compare?ids={a['id']}&ids={b['id']}")
    assert resp.status_code == 303 and resp.headers["Location"].endswith(f"/jobs/compare?ids={a['id']},{b['id']}")

    # Another user: the admin's jobs are not theirs to see, alone or beside their own.
    bob = client_for(app, "bob")
    own = _submit(bob, name="bob's")
    assert bob.get(f"/api/v1/jobs/compare?ids={own['id']}").status_code == 200
    unknown = bob.get("/api/v1/jobs/compare?ids=no-such-job").get_json()
    for ids in (a["id"], f"{own['id']},{a['id']}"):
        resp = bob.get(f"/api/v1/jobs/compare?ids={ids}")
        assert resp.status_code == 404 and resp.get_json() == unknown    # nothing leaks, not even its name
        page = bob.get(f"/jobs/compare?ids={ids}", headers={"Accept": "text/html"})
        assert page.status_code == 404 and a["name"] not in page.get_data(as_text=True)
    assert client.get(f"/api/v1/jobs/compare?ids={own['id']},{a['id']}").status_code == 200   # the admin sees all
    assert client.get("/api/v1/jobs/compare").status_code == 400
    too_many = ",".join(f"j{n}" for n in range(33))
    assert client.get(f"/api/v1/jobs/compare?ids={too_many}").status_code == 400


@pytest.mark.slow
def test_compare_trained_jobs_in_the_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    from helpers import initial_token
    url, instance = server
    token = initial_token(instance)

    def submit(name: str, lr: str, layer: str) -> dict:
        return api(url, token, "POST", "/api/v1/jobs", {
            "network": ("n.prototxt", LENET_SEED.encode()), "python_layer": ("l.py", layer.encode()),
            "dataset": (None, b"sample-digits"), "max_iter": (None, b"24"), "learning_rate": (None, lr.encode()),
            "val_interval": (None, b"0.5"), "name": (None, name.encode()), "device": (None, b"cpu")})

    _login(browser, url, instance)
    a, b = submit("slow lr", "0.001", SEED_LAYER), submit("fast lr", "0.05", CHANGED_LAYER)
    for job in (a, b):
        import time
        deadline = time.monotonic() + 120
        while api(url, token, "GET", f"/api/v1/jobs/{job['id']}")["status"] not in ("done", "error"):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert api(url, token, "GET", f"/api/v1/jobs/{job['id']}")["status"] == "done"

    browser.get(url + "/")
    for job in (a, b):
        browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job-id="{job["id"]}"] input.pick').click()
    assert browser.find_element(By.ID, "compare-count").text == "2 selected"
    browser.find_element(By.ID, "compare-btn").click()
    _wait(lambda: "/jobs/compare?ids=" in browser.current_url and browser.find_elements(By.ID, "chart-compare"))
    ids = browser.current_url.split("ids=", 1)[1].replace("%2C", ",").split(",")
    assert sorted(ids) == sorted([a["id"], b["id"]])        # one shareable URL

    def curves() -> dict:
        return browser.execute_script(
            "var c = Chart.getChart(document.getElementById('chart-compare')); var r = {};"
            "c.data.datasets.forEach(function (d) { r[d.label] = d.data.map(function (p) { return p.x; }); });"
            "return {title: c.options.scales.x.title.text, y: c.options.scales.y.title.text, curves: r};")

    shown = _wait(lambda: (s := curves())["curves"] and s)
    assert shown["y"] == "val accuracy" and shown["title"] == "epoch"
    assert set(shown["curves"]) == {"slow lr", "fast lr"}
    assert all(len(xs) >= 2 for xs in shown["curves"].values())      # both jobs, real validation points
    Select(browser.find_element(By.ID, "metric")).select_by_value("train loss")
    Select(browser.find_element(By.ID, "axis")).select_by_value("wall_seconds")
    shown = curves()
    assert shown["title"] == "wall time (s)" and shown["y"] == "train loss"
    for xs in shown["curves"].values():
        assert len(xs) >= 2 and xs[0] == 0 and xs == sorted(xs) and xs[-1] > 0
    Select(browser.find_element(By.ID, "axis")).select_by_value("iteration")
    assert max(max(xs) for xs in curves()["curves"].values()) == 24

    row = browser.find_element(By.CSS_SELECTOR, '#settings tr[data-setting="learning_rate"]')
    assert "differs" in row.get_attribute("class")
    assert row.find_element(By.CSS_SELECTOR, "td").value_of_css_property("background-color") != \
        browser.find_element(By.CSS_SELECTOR, '#settings tr[data-setting="dataset"] td').value_of_css_property(
            "background-color")
    assert "differs" not in browser.find_element(By.CSS_SELECTOR, '#settings tr[data-setting="dataset"]'
                                                 ).get_attribute("class")
    added = browser.find_elements(By.CSS_SELECTOR, "pre.diff span.add")
    assert any("Renamed for the comparison" in s.text for s in added) or \
        any("Renaming for clarity" in s.text for s in added)     # whichever job is the baseline
    finals = browser.find_elements(By.CSS_SELECTOR, '#compare-jobs td.final[data-metric="val accuracy"]')
    assert len(finals) == 2 and all(0.0 <= float(f.text) <= 1.0 for f in finals)
    shots = Path(os.environ.get("LAYERBENCH_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shots / "compare.png"))
    csp = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert csp == []
    # The API answers the same data to the shared link's ids.
    body = api(url, token, "GET", f"/api/v1/jobs/compare?ids={','.join(ids)}")
    assert [j["id"] for j in body["jobs"]] == ids and "val accuracy" in body["metrics"]
