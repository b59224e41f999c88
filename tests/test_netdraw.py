"""Network pictures: real Graphviz renders the seed network with the Python
layer marked and its class named."""
from __future__ import annotations

import re

from app.caffe import netdraw
from app.caffe import network
from helpers import LENET_SEED, post


def test_dot_marks_python_layers_and_escapes_names():
    net = network.parse(LENET_SEED.replace('name: "LeNet"', 'name: "Le\\"Net"')).net
    dot = netdraw.to_dot(net)
    assert 'Python: AccuracyLayer' in dot and '#fde68a' in dot
    assert 'label="Le\\"Net"' in dot
    assert "[val]" in dot        # stage-limited layers say where they live


def test_seed_network_renders_to_svg_via_form_and_job_page(client):
    html = client.get("/jobs/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    resp = client.post("/networks/visualize", data={"csrf_token": token, "network_text": LENET_SEED})
    assert resp.status_code == 200 and resp.mimetype == "image/svg+xml"
    svg = resp.get_data(as_text=True)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "Python: AccuracyLayer" in svg and "conv1" in svg
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    bad = client.post("/networks/visualize", data={"csrf_token": token, "network_text": "layer {"},
                      headers={"Accept": "application/json"})
    assert bad.status_code == 400 and bad.get_json()["error"] == "invalid_network"
    job = post(client, "/api/v1/jobs", max_iter=3).get_json()
    page = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert f"/jobs/{job['id']}/network.svg" in page
    job_svg = client.get(f"/jobs/{job['id']}/network.svg")
    assert job_svg.status_code == 200 and "Python: AccuracyLayer" in job_svg.get_data(as_text=True)
