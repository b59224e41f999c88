"""Job listings page: /api/v1/jobs, DIGITS's /index.json and the page `/`
return one page (default 50, newest first) and an opaque keyset cursor, so a
listing costs the same with 100 jobs or 20,000 (bench/job_list.py).

Jobs are inserted straight into the store (status done: no worker runs).
"""
from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from helpers import client_for

BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _at(seconds: float) -> str:
    return (BASE + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def add_jobs(store, n: int, owner: str = "admin", start: float = 0.0, **fields) -> list[dict]:
    """``n`` done jobs of ``owner``; two jobs share each created_at (ties are
    broken by id, and ids are random, so id order is not insertion order)."""
    fields.setdefault("status", "done")
    out = []
    for i in range(n):
        job_id = f"j{secrets.token_hex(6)}"
        out.append(store.insert_job(id=job_id, name=f"job {owner} {i}", owner=owner,
                                    created_at=_at(start + i // 2), **fields))
    return out


def newest_first(rows) -> list[str]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]


def walk(client, url: str, key: str = "jobs") -> list[list[str]]:
    """Every page of ``url`` (which has a query string), following next_cursor."""
    pages, cursor = [], None
    while True:
        resp = client.get(url + (f"&cursor={cursor}" if cursor else ""))
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        pages.append([j["id"] for j in body[key]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor does not advance"


@pytest.fixture
def store(app):
    return app.extensions["store"]


def test_limit_is_honoured_default_50(store, client):
    add_jobs(store, 120)
    body = client.get("/api/v1/jobs").get_json()
    assert len(body["jobs"]) == 50 and body["next_cursor"]
    body = client.get("/api/v1/jobs?limit=7").get_json()
    assert len(body["jobs"]) == 7 and body["next_cursor"]
    assert len(client.get("/api/v1/jobs?limit=500").get_json()["jobs"]) == 120


def test_pages_are_newest_first_disjoint_and_complete(store, client):
    jobs = add_jobs(store, 120)
    pages = walk(client, "/api/v1/jobs?limit=25")
    assert [len(p) for p in pages] == [25, 25, 25, 25, 20]
    flat = [i for p in pages for i in p]
    assert len(set(flat)) == len(flat) == 120
    assert flat == newest_first(jobs)
    # The job JSON is the full one of API.md.
    first = client.get("/api/v1/jobs?limit=1").get_json()["jobs"][0]
    assert first["id"] == flat[0] and first["links"]["page"] == f"/jobs/{flat[0]}"


def test_a_last_page_that_is_exactly_full_has_no_next_cursor(store, client):
    add_jobs(store, 50)
    body = client.get("/api/v1/jobs").get_json()
    assert len(body["jobs"]) == 50 and body["next_cursor"] is None


def test_inserts_between_pages_neither_skip_nor_repeat(store, client):
    jobs = add_jobs(store, 120)
    body = client.get("/api/v1/jobs?limit=30").get_json()
    seen = [j["id"] for j in body["jobs"]]
    cursor = body["next_cursor"]
    # Meanwhile: newer jobs arrive (offset paging would repeat rows), and the
    # newest jobs already seen are deleted (offset paging would skip rows).
    newer = add_jobs(store, 10, start=10_000)
    for job_id in seen[:5]:
        store.delete_job(job_id)
    while cursor:
        body = client.get(f"/api/v1/jobs?limit=30&cursor={cursor}").get_json()
        seen += [j["id"] for j in body["jobs"]]
        cursor = body["next_cursor"]
    assert seen == newest_first(jobs)
    assert not {j["id"] for j in newer} & set(seen)
    # The next walk from the top starts with them.
    assert client.get("/api/v1/jobs?limit=10").get_json()["jobs"][0]["id"] == newest_first(newer)[0]


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=-1", "limit=abc", "limit=1.5", "limit=1_0",
                                   "cursor=nonsense", "cursor=W10", "cursor=%FF%FE", "status=bogus"])
def test_bad_limit_cursor_or_status_is_400_in_the_error_shape(client, query):
    for url in (f"/api/v1/jobs?{query}", f"/index.json?{query}"):
        if url.startswith("/index.json") and query.startswith("status"):
            continue
        resp = client.get(url)
        assert resp.status_code == 400, url
        body = resp.get_json()
        assert body["error"] == "invalid_request" and body["message"]
        assert body["details"][0]["field"] == query.split("=")[0], body


def test_filters_status_dataset_and_ids_page_too(store, client):
    done = add_jobs(store, 30)
    aborted = add_jobs(store, 12, start=5000, status="aborted")
    ds = add_jobs(store, 9, start=7000, dataset="sample-digits")
    flat = [i for p in walk(client, "/api/v1/jobs?status=aborted&limit=5") for i in p]
    assert flat == newest_first(aborted)
    assert [i for p in walk(client, "/api/v1/jobs?dataset=sample-digits&limit=4") for i in p] == newest_first(ds)
    pick = [done[3]["id"], aborted[0]["id"], ds[8]["id"], "no-such-job"]
    body = client.get("/api/v1/jobs?ids=" + ",".join(pick)).get_json()
    assert [j["id"] for j in body["jobs"]] == newest_first([done[3], aborted[0], ds[8]])
    assert body["next_cursor"] is None
    body = client.get("/api/v1/jobs?status=aborted&ids=" + ",".join(pick)).get_json()
    assert [j["id"] for j in body["jobs"]] == [aborted[0]["id"]]
    assert client.get("/api/v1/jobs?ids=").get_json() == {"jobs": [], "next_cursor": None}
    assert client.get("/api/v1/jobs?ids=" + ",".join(["x"] * 501)).status_code == 400


def test_other_users_jobs_never_appear(app, store):
    alice_jobs = add_jobs(store, 60, owner="alice")
    bob_jobs = add_jobs(store, 55, owner="bob", start=30)     # interleaved in time with alice's
    bob = client_for(app, "bob")
    admin = client_for(app, "root", admin=True)
    theirs = {j["id"] for j in alice_jobs}
    for url in ("/api/v1/jobs?limit=20", "/api/v1/jobs?limit=20&owner=bob"):
        flat = [i for p in walk(bob, url) for i in p]
        assert flat == newest_first(bob_jobs), url
    # Asking for another owner, by name, by ids or with a cursor taken from
    # an admin's walk, shows nothing of theirs.
    assert bob.get("/api/v1/jobs?owner=alice").get_json() == {"jobs": [], "next_cursor": None}
    assert bob.get("/api/v1/jobs?ids=" + ",".join(sorted(theirs)[:10])).get_json()["jobs"] == []
    cursor = admin.get("/api/v1/jobs?limit=3").get_json()["next_cursor"]
    assert not theirs & {j["id"] for j in bob.get(f"/api/v1/jobs?cursor={cursor}").get_json()["jobs"]}
    assert not theirs & {i for p in walk(bob, "/index.json?limit=10", "models") for i in p}
    # Admins see everyone's, and may filter by owner.
    assert [i for p in walk(admin, "/api/v1/jobs?owner=alice&limit=25") for i in p] == newest_first(alice_jobs)
    assert len([i for p in walk(admin, "/api/v1/jobs?limit=50") for i in p]) == 115


def test_digits_index_json_pages_with_digits_field_names(store, client):
    jobs = add_jobs(store, 70)
    body = client.get("/index.json").get_json()
    assert len(body["models"]) == 50 and body["next_cursor"]
    assert {"datasets", "models", "version"} <= set(body)
    assert any(d["id"] == "sample-digits" for d in body["datasets"])
    model = body["models"][0]
    assert model["job id"] == model["id"] and model["framework"] == "caffe"
    assert [i for p in walk(client, "/index.json?limit=30", "models") for i in p] == newest_first(jobs)
    rest = client.get(f"/index.json?cursor={body['next_cursor']}").get_json()
    assert [m["id"] for m in rest["models"]] == newest_first(jobs)[50:] and rest["next_cursor"] is None


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-job-id="([^"]+)"', html)


def test_job_list_page_shows_50_rows_and_a_more_link(store, client):
    jobs = add_jobs(store, 120)
    order, seen, url, pages = newest_first(jobs), [], "/", 0
    while url:
        resp = client.get(url)
        assert resp.status_code == 200, url
        html = resp.get_data(as_text=True)
        rows = _rows(html)
        assert len(rows) == min(50, 120 - len(seen))
        seen += rows
        pages += 1
        more = re.search(r'<a href="([^"]+)" id="more-jobs"', html)
        url = more.group(1).replace("&amp;", "&") if more else None
        assert ("sample-digits" in html) and (pages == 1 or 'id="newest-jobs"' in html)
    assert pages == 3 and seen == order
    assert client.get("/?cursor=garbage").status_code == 400


def test_job_list_page_without_more_jobs_has_no_pager(store, client):
    add_jobs(store, 3)
    html = client.get("/").get_data(as_text=True)
    assert len(_rows(html)) == 3 and "more-jobs" not in html and "jobs-pager" not in html


def _plans(store, run) -> list[tuple[str, str]]:
    """(SQL, EXPLAIN QUERY PLAN text) of each SELECT on jobs that ``run`` makes."""
    seen = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            seen.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", grab)
    try:
        run()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", grab)
    out = []
    with store.engine.connect() as conn:
        for statement, parameters in seen:
            raw = conn.connection.dbapi_connection.cursor()
            plan = " | ".join(r[-1] for r in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters))
            out.append((statement, plan))
    return out


def test_page_queries_are_index_range_scans(app, store, client):
    add_jobs(store, 120)
    add_jobs(store, 20, owner="bob")
    bob = client_for(app, "bob")
    cursor = client.get("/api/v1/jobs?limit=10").get_json()["next_cursor"]
    for who, url in ((client, f"/api/v1/jobs?cursor={cursor}"), (client, "/api/v1/jobs"),
                     (bob, f"/api/v1/jobs?cursor={cursor}"), (client, f"/api/v1/jobs?status=done&cursor={cursor}"),
                     (client, "/api/v1/jobs?dataset=sample-digits")):
        plans = _plans(store, lambda: who.get(url))
        assert plans, url
        for statement, plan in plans:
            assert "USING INDEX ix_jobs_" in plan and "TEMP B-TREE" not in plan, (url, plan)


def test_an_existing_database_gets_the_new_indexes(app, store):
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_jobs_created_id"))
        conn.execute(sa.text("DROP INDEX ix_jobs_owner_created_id"))
    store.create_schema()
    store.create_schema()    # idempotent
    with store.engine.connect() as conn:
        names = {r[0] for r in conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    assert {"ix_jobs_created_id", "ix_jobs_owner_created_id", "ix_jobs_status_created_id",
            "ix_jobs_dataset_created_id"} <= names
