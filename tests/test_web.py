"""Pages blueprint: health check."""


def test_healthz_reports_caffe_containment_and_store(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["ok"] is True
    assert body["caffe"]["python_layer"] is True
    assert body["caffe"]["version"] == "1.0.0"
    assert body["store"] == {"ok": True, "backend": "sqlite"}
    assert body["containment"] in {"bwrap", "unshare", "none"}
    assert resp.headers["Cache-Control"] == "no-store"


def test_unknown_api_route_gets_error_shape(client):
    resp = client.get("/api/v1/nope")
    assert resp.status_code == 404
    assert resp.get_json()["error"] == "not_found"
