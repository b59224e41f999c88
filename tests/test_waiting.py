"""Jobs on a dataset that is still building wait for it (DIGITS's Waiting,
DIGITS #729: never shown as running while waiting), then validate and run,
or end in error with the reason. Real worker, real builds, real Caffe."""
from __future__ import annotations

import pytest

from helpers import SEED_LAYER, Workers, post, wait_for
from helpers import digit_pngs as _pngs, upload_dataset as _upload, zip_of as _zip

pytestmark = pytest.mark.slow


def test_jobs_wait_for_their_dataset_then_run_or_fail_clearly(app, client):
    good = _upload(client, _zip(_pngs(per_class=20))).get_json()
    bad = _upload(client, _zip({"only/one.png": _pngs(classes=(0,), per_class=1)["digit_0/000.png"]}),
                  name="one class").get_json()
    assert good["status"] == bad["status"] == "queued"      # no worker yet: nothing builds

    ok = post(client, "/api/v1/jobs", dataset=good["id"], max_iter=4)
    assert ok.status_code == 201, ok.get_json()
    ok = ok.get_json()
    broken_layer = SEED_LAYER.replace("def setup(self, bottom, top):",
                                      "def setup(self, bottom, top):\n        raise ValueError('no setup')", 1)
    wrong = post(client, "/api/v1/jobs", dataset=good["id"], max_iter=4, layer=broken_layer).get_json()
    orphan = post(client, "/api/v1/jobs", dataset=bad["id"], max_iter=4).get_json()
    dropped = post(client, "/api/v1/jobs", dataset=good["id"], max_iter=4).get_json()
    for job in (ok, wrong, orphan, dropped):
        assert job["status"] == "waiting", job
    # Bad fields are still refused at once, dataset or not.
    assert post(client, "/api/v1/jobs", dataset=good["id"], use_mean="median").status_code == 400
    page = client.get(f"/jobs/{ok['id']}").get_data(as_text=True)
    assert 'class="status waiting"' in page and "running" not in page.split("Status history")[0].lower()
    # The dataset a job waits for cannot be deleted; a waiting job can be aborted.
    assert client.delete(f"/api/v1/datasets/{good['id']}").status_code == 409
    assert client.post(f"/api/v1/jobs/{dropped['id']}/abort").status_code in (200, 202)
    assert client.get(f"/api/v1/jobs/{dropped['id']}").get_json()["status"] == "aborted"

    workers = Workers(app)
    workers.start()
    try:
        done = wait_for(client, ok["id"], {"done", "error"}, timeout=180)
        assert done["status"] == "done" and done["max_iter"] == 4, done
        failed = wait_for(client, wrong["id"], {"done", "error", "queued", "running"}, timeout=60)
        assert failed["status"] == "error", failed
        assert "no setup" in failed["error"]["message"] and failed["error"]["line"], failed["error"]
        report = client.get(f"/api/v1/jobs/{wrong['id']}").get_json()
        assert report["status"] == "error"
        lost = wait_for(client, orphan["id"], {"error", "queued", "running", "done"}, timeout=60)
        assert lost["status"] == "error" and bad["id"] in lost["error"]["message"], lost
        assert "failed to build" in lost["error"]["message"]
        events = app.extensions["store"].job_events(ok["id"])
        assert [e["status"] for e in events][:3] == ["waiting", "queued", "running"], events
    finally:
        for w in workers.procs:
            w.stop()
