"""The Workers page and /healthz's worker fields in the local queue (the
celery queue's side is in tests/test_celery.py, with real workers)."""
from __future__ import annotations


def test_local_queue_has_no_workers_to_list(client):
    page = client.get("/workers")
    assert page.status_code == 200 and 'id="local-queue"' in page.get_data(as_text=True)
    health = client.get("/healthz").get_json()
    assert health["queue"] == "local" and health["workers"] == [] and health["broker_ok"] is None


def test_the_workers_page_needs_a_login(app):
    resp = app.test_client().get("/workers")
    assert resp.status_code in (302, 401)


def test_the_local_worker_refuses_to_run_beside_celery_workers(tmp_path, sample_datasets):
    # Its start-up recovery would mark jobs training on other hosts interrupted.
    from helpers import make_app
    app = make_app(tmp_path, sample_datasets, QUEUE="celery", BROKER_URL="redis://127.0.0.1:1/0")
    with app.app_context():      # as `flask --app wsgi worker` runs it
        result = app.test_cli_runner().invoke(args=["worker"])
    assert result.exit_code != 0 and "make worker" in result.output
    app.extensions["store"].engine.dispose()
