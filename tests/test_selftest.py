"""The server's own faults are said to be the server's: a validator that
cannot start is a 503 (never the user's 400), and the start-up self-test --
a real contained validation -- puts it on /healthz."""
from __future__ import annotations

import pytest

from app.services.operations import selftest
from app.services.jobs.intake import ready_datasets
from helpers import client_for, make_app, post


@pytest.fixture
def broken_install(tmp_path, sample_datasets):
    """An app whose validator interpreter has no pycaffe (a broken install)."""
    app = make_app(tmp_path, sample_datasets, CAFFE_PYTHON="/usr/bin/python3.11")
    yield app
    app.extensions["store"].engine.dispose()


def test_a_validator_that_cannot_start_is_a_503_not_the_users_fault(broken_install):
    resp = post(client_for(broken_install), "/api/v1/validate")
    body = resp.get_json()
    assert resp.status_code == 503, body
    assert body["error"] == "validator_unavailable" and "not of your upload" in body["message"]
    resp = post(client_for(broken_install), "/api/v1/jobs", max_iter=1)
    assert resp.status_code == 503 and client_for(broken_install).get("/api/v1/jobs").get_json()["jobs"] == []


def test_selftest_reports_the_broken_install_on_healthz(broken_install):
    c = broken_install.extensions["ctx"]
    result = selftest.run(c.cfg, c.ws, c.containment, ready_datasets(c.store, c.ws))
    assert result["ok"] is False and "ModuleNotFoundError" in result["reason"], result
    selftest.save(broken_install.instance_path, result)
    health = client_for(broken_install).get("/healthz").get_json()      # the admin: the details
    assert health["ok"] is False and health["selftest"]["reason"] == result["reason"]
    assert health["status"] == "unhealthy"
    # Anyone else learns only that it is unhealthy, not why.
    assert broken_install.test_client().get("/healthz").get_json() == {"status": "unhealthy"}


def test_selftest_passes_on_a_working_install(app):
    c = app.extensions["ctx"]
    result = selftest.run(c.cfg, c.ws, c.containment, ready_datasets(c.store, c.ws))
    assert result["ok"] is True and result["containment"] == "bwrap", result
