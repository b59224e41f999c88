"""Issue 22, items 4-7, against the real app: one CSRF rule on every
state-changing route, login's ``next`` judged as a browser reads it,
failed sign-ins limited (429 + Retry-After) without locking the real user
out, and revocation (deactivate, tokens, sessions, expiry, admin page)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers import client_for, make_app, post

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _csrf(client, url: str = "/login") -> str:
    html = client.get(url).get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def _login(app, name: str, password: str, next_: str | None = None, addr: str | None = None):
    """A browser signed in through the real login form: (client, response)."""
    web = app.test_client()
    if addr:
        web.environ_base["REMOTE_ADDR"] = addr
    web.csrf = _csrf(web)
    url = "/login" + (f"?next={quote(next_, safe='')}" if next_ is not None else "")
    return web, web.post(url, data={"csrf_token": web.csrf, "username": name, "password": password})


def _state(app) -> dict:
    store = app.extensions["store"]
    pretrained = Path(app.config["JOBS_DIR"]) / "pretrained"
    return {"jobs": store.list_jobs(), "datasets": store.list_datasets(), "users": store.list_users(),
            "tokens": store.list_tokens(), "pretrained": sorted(p.name for p in pretrained.iterdir())}


# ---- 4: CSRF -----------------------------------------------------------------
def test_every_state_changing_route_refuses_a_session_cookie_alone(app):
    client_for(app, "victim", password="pw-victim-1")
    api = client_for(app, "sess", admin=True, password="pw-sess-1")
    jid = post(api, "/api/v1/jobs", max_iter=3).get_json()["id"]
    app.extensions["store"].upsert_dataset("mine", name="mine", owner="sess", status="done", info={})
    mid = "20260101-000000-0000beef"     # a kept pretrained model, as the service lays one out
    model = Path(app.config["JOBS_DIR"]) / "pretrained" / mid
    model.mkdir(parents=True)
    (model / "meta.json").write_text(json.dumps({"id": mid, "name": "m", "owner": "sess", "layers": [],
                                                 "created_at": "2026-01-01T00:00:00Z"}))
    with app.app_context():
        prefix = app.extensions["ctx"].store.list_tokens("victim")[0]["prefix"]
    values = {"job_id": jid, "dataset_id": "mine", "model_id": mid, "name": "victim", "prefix": prefix}
    actions = {"web.job_action": "delete", "admin.user_action": "deactivate"}
    web, resp = _login(app, "sess", "pw-sess-1")
    assert resp.status_code == 303
    before = _state(app)
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "web.login" or not rule.methods & STATE_CHANGING:
            continue      # login is public: its form's own check is test_auth.py's
        unknown = set(rule.arguments) - set(values) - {"action"}
        assert not unknown, f"{rule.rule}: give this test a value for {unknown}"
        args = {a: values[a] for a in rule.arguments if a != "action"}
        if "action" in rule.arguments:
            args["action"] = actions[rule.endpoint]
        url = rule.build(args)[1]
        routes += [(method, url) for method in sorted(rule.methods & STATE_CHANGING)]
    assert len(routes) > 35 and ("DELETE", f"/api/v1/pretrained/{mid}") in routes
    form = {"name": "changed", "notes": "changed", "dataset": "sample-digits"}
    for method, url in routes:
        resp = web.open(url, method=method, data=form)
        assert resp.status_code in (400, 403), (method, url, resp.status_code)
        assert "CSRF" in resp.get_data(as_text=True), (method, url)
    assert _state(app) == before                       # nothing changed
    assert web.get("/").status_code == 200             # and the session lives (no logout happened)
    # The same requests with the bearer token instead: never refused for CSRF.
    bearer = app.test_client()
    bearer.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api.token}"
    for method, url in routes:
        resp = bearer.open(url, method=method, data=form)
        assert resp.status_code < 500 and "CSRF" not in resp.get_data(as_text=True), (method, url)
    assert not model.exists()                          # the token's DELETE went through


def test_session_writes_with_the_csrf_header_are_accepted(app):
    client_for(app, "carol", password="pw-carol-1")
    app.extensions["store"].upsert_dataset("carols", name="c", owner="carol", status="done", info={})
    web, _ = _login(app, "carol", "pw-carol-1")
    assert web.delete("/api/v1/datasets/carols").status_code == 400
    assert web.delete("/api/v1/datasets/carols", headers={"X-CSRFToken": web.csrf}).status_code == 204
    assert app.extensions["store"].get_dataset("carols") is None


# ---- 5: next= ----------------------------------------------------------------
BAD_NEXT = ["/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "\t//evil.example", " //evil.example",
            "//evil.example", "/\\evil.example", "\\\\evil.example", "\\/evil.example", "/\x00/evil.example",
            "https://evil.example/", "https:evil.example", "javascript:alert(1)", "JaVaScRiPt:alert(1)",
            "evil.example", "", "/\t\\evil.example"]


@pytest.mark.parametrize("target", BAD_NEXT, ids=repr)
def test_next_outside_this_site_goes_home(app, target):
    from app.web.auth import safe_next
    with app.test_request_context():
        assert safe_next(target) == "/"


def test_login_next_as_the_browser_reads_it(app):
    client_for(app, "dave", password="pw-dave-1")
    for target in ("/\t/evil.example", "/\\evil.example", "//evil.example", "https://evil.example", "javascript:x"):
        _, resp = _login(app, "dave", "pw-dave-1", next_=target)
        assert resp.status_code == 303 and resp.headers["Location"] == "/", target
    web = app.test_client()                          # the issue's own URL, encoded as sent
    resp = web.post("/login?next=/%09/evil.example", data={"csrf_token": _csrf(web), "username": "dave",
                                                           "password": "pw-dave-1"})
    assert resp.headers["Location"] == "/"
    _, resp = _login(app, "dave", "pw-dave-1", next_="/jobs/x?y=1")
    assert resp.status_code == 303 and resp.headers["Location"] == "/jobs/x?y=1"


# ---- 6: failed sign-ins --------------------------------------------------------
def test_guessed_basic_passwords_get_429_but_the_user_still_logs_in_elsewhere(app):
    client_for(app, "erin", password="pw-erin-real")
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    codes, last = [], None
    for i in range(30):
        last = attacker.get("/api/v1/jobs", auth=("erin", f"guess-{i}"))
        codes.append(last.status_code)
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
    assert last.get_json()["error"] == "too_many_requests"
    assert 0 < int(last.headers["Retry-After"]) <= app.config["LOGIN_WINDOW_SECONDS"]
    # The right password from the attacker's address is refused too (no oracle) ...
    assert attacker.get("/api/v1/jobs", auth=("erin", "pw-erin-real")).status_code == 429
    # ... while erin, elsewhere, is not locked out: Basic and the login form.
    home = app.test_client()
    home.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    assert home.get("/api/v1/jobs", auth=("erin", "pw-erin-real")).status_code == 200
    _, resp = _login(app, "erin", "pw-erin-real", addr="198.51.100.7")
    assert resp.status_code == 303


def test_login_form_failures_get_429(app):
    client_for(app, "fay", password="pw-fay-real")
    web = app.test_client()
    web.environ_base["REMOTE_ADDR"] = "203.0.113.10"
    token = _csrf(web)
    codes = [web.post("/login", data={"csrf_token": token, "username": "fay", "password": f"no-{i}"}).status_code
             for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    resp = web.post("/login", data={"csrf_token": token, "username": "fay", "password": "pw-fay-real"})
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0


def test_one_address_spraying_names_or_tokens_is_limited(tmp_path, sample_datasets):
    app = make_app(tmp_path, sample_datasets, LOGIN_ADDRESS_FAILURES=6)
    good = client_for(app, "gil", password="pw-gil-real")
    sprayer = app.test_client()
    sprayer.environ_base["REMOTE_ADDR"] = "203.0.113.11"
    codes = [sprayer.get("/api/v1/jobs", auth=(f"user{i}", "pw")).status_code for i in range(8)]
    assert codes == [401] * 6 + [429] * 2
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "203.0.113.12"
    codes = [other.get("/api/v1/jobs", headers={"Authorization": f"Bearer lb_bad{i}"}).status_code for i in range(8)]
    assert codes == [401] * 6 + [429] * 2
    # A valid token is never throttled (guessing one is hopeless).
    assert other.get("/api/v1/jobs", headers={"Authorization": f"Bearer {good.token}"}).status_code == 200
    app.extensions["store"].engine.dispose()


def test_failures_are_shared_through_redis_in_celery_mode(tmp_path, sample_datasets, redis_server):
    # Two app objects = two web processes of one install: one count.
    broker = redis_server.url.replace("/0", "/5")
    apps = [make_app(tmp_path / n, sample_datasets, QUEUE="celery", BROKER_URL=broker, LOGIN_FAILURES=3)
            for n in ("a", "b")]
    for a in apps:
        client_for(a, "hal", password="pw-hal-real")
    first, second = (a.test_client() for a in apps)
    assert [first.get("/api/v1/jobs", auth=("hal", "x")).status_code for _ in range(3)] == [401] * 3
    assert second.get("/api/v1/jobs", auth=("hal", "x")).status_code == 429
    assert apps[1].extensions["throttle"].url == broker
    for a in apps:
        a.extensions["throttle"].close()
        a.extensions["store"].engine.dispose()


# ---- 7: revocation -------------------------------------------------------------
def _cli(app, *args):
    return app.test_cli_runner().invoke(args=["users", *args])


def test_tokens_are_listed_by_prefix_and_revoked_at_once(app):
    first = client_for(app, "ivy", password="pw-ivy-1")
    second = client_for(app, "ivy")
    assert first.get("/api/v1/jobs").status_code == 200          # used now, and cached for 10 s
    out = _cli(app, "tokens", "ivy")
    assert out.exit_code == 0 and first.token not in out.output    # prefixes only, never the token
    lines = {line[:8]: line for line in out.output.strip().splitlines()}
    p1, p2 = first.token[3:11], second.token[3:11]
    assert {p1, p2} <= set(lines) and "created 20" in lines[p1]   # (and the one `create` made)
    assert "last used never" not in lines[p1] and "last used never" in lines[p2]
    assert _cli(app, "revoke-token", "ivy", p1).exit_code == 0
    assert first.get("/api/v1/jobs").status_code == 401            # at once: the cache was cleared
    assert second.get("/api/v1/jobs").status_code == 200
    assert _cli(app, "revoke-token", "ivy", "nosuchpx").exit_code != 0
    assert _cli(app, "revoke-token", "ivy").exit_code != 0          # a prefix or --all
    assert _cli(app, "revoke-token", "ivy", "--all").exit_code == 0
    assert second.get("/api/v1/jobs").status_code == 401
    assert "no API tokens" in _cli(app, "tokens", "ivy").output


def test_deactivated_user_is_refused_everywhere_and_keeps_jobs(app, client):
    jo = client_for(app, "jo", password="pw-jo-1")
    jid = post(jo, "/api/v1/jobs", max_iter=3).get_json()["id"]
    web, _ = _login(app, "jo", "pw-jo-1")
    basic = app.test_client()
    assert basic.get("/api/v1/jobs", auth=("jo", "pw-jo-1")).status_code == 200   # cached now
    assert web.get("/api/v1/jobs").status_code == 200
    assert _cli(app, "deactivate", "jo").exit_code == 0
    assert jo.get("/api/v1/jobs").status_code == 401
    assert basic.get("/api/v1/jobs", auth=("jo", "pw-jo-1")).status_code == 401
    assert web.get("/api/v1/jobs").status_code == 401 and web.get("/").status_code == 302
    assert _login(app, "jo", "pw-jo-1")[1].status_code == 401
    assert client.get(f"/api/v1/jobs/{jid}").get_json()["owner"] == "jo"        # the job is kept
    out = _cli(app, "delete", "jo")                                               # and cannot be orphaned
    assert out.exit_code != 0 and "deactivate them instead" in out.output
    assert app.extensions["store"].get_user("jo") is not None
    assert "REFUSED while the user owns jobs" in _cli(app, "delete", "--help").output
    assert _cli(app, "activate", "jo").exit_code == 0
    assert jo.get("/api/v1/jobs").status_code == 200                              # tokens were kept
    assert web.get("/api/v1/jobs").status_code == 401                             # old sessions stay ended
    assert _login(app, "jo", "pw-jo-1")[1].status_code == 303


def test_delete_a_user_without_work(app):
    kim = client_for(app, "kim")
    assert _cli(app, "delete", "kim").exit_code == 0
    assert kim.get("/api/v1/jobs").status_code == 401
    assert app.extensions["store"].list_tokens("kim") == []
    assert _cli(app, "delete", "kim").exit_code != 0


def test_logout_and_password_change_end_every_session(app):
    client_for(app, "lu", password="pw-lu-1")
    laptop, _ = _login(app, "lu", "pw-lu-1")
    phone, _ = _login(app, "lu", "pw-lu-1")
    copied = app.test_client()                       # a cookie copied before the logout
    copied.set_cookie("session", laptop.get_cookie("session").value)
    assert copied.get("/api/v1/jobs").status_code == 200
    assert laptop.post("/logout", data={"csrf_token": laptop.csrf}).status_code == 303
    for browser in (laptop, phone, copied):
        assert browser.get("/api/v1/jobs").status_code == 401
    desk, _ = _login(app, "lu", "pw-lu-1")
    assert desk.get("/api/v1/jobs").status_code == 200
    assert _cli(app, "password", "lu", "--password", "pw-lu-2").exit_code == 0
    assert desk.get("/api/v1/jobs").status_code == 401
    basic = app.test_client()
    assert basic.get("/api/v1/jobs", auth=("lu", "pw-lu-1")).status_code == 401
    assert basic.get("/api/v1/jobs", auth=("lu", "pw-lu-2")).status_code == 200
    assert _login(app, "lu", "pw-lu-2")[1].status_code == 303


def test_tokens_expire_after_token_days(tmp_path, sample_datasets):
    import sqlalchemy as sa
    from app.store import tokens
    app = make_app(tmp_path, sample_datasets, TOKEN_DAYS=30)
    old = client_for(app, "mo")
    store = app.extensions["store"]
    with store.engine.begin() as conn:               # made 31 days ago
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 31 * 86400))
        conn.execute(tokens.update().where(tokens.c.token_hash == sa.bindparam("h")), {"h": _hash(old.token),
                                                                                         "created_at": created})
    assert old.get("/api/v1/jobs").status_code == 401
    fresh = client_for(app, "mo")
    assert fresh.get("/api/v1/jobs").status_code == 200
    out = _cli(app, "tokens", "mo").output
    assert f"{old.token[3:11]}  created" in out and "expired" in out and "expires" in out
    store.engine.dispose()


def _hash(token: str) -> str:
    import hashlib
    return hashlib.sha256(token.encode()).hexdigest()


def test_admin_page_lists_users_and_revokes(app):
    nat = client_for(app, "nat", password="pw-nat-1")
    client_for(app, "boss", admin=True, password="pw-boss-1")
    admin, _ = _login(app, "boss", "pw-boss-1")
    html = admin.get("/admin/users").get_data(as_text=True)
    prefix = nat.token[3:11]
    assert prefix in html and nat.token not in html and 'data-user="nat"' in html
    assert 'href="/admin/users"' in admin.get("/").get_data(as_text=True)
    resp = admin.post(f"/admin/users/nat/tokens/{prefix}/revoke", data={"csrf_token": admin.csrf})
    assert resp.status_code == 303 and nat.get("/api/v1/jobs").status_code == 401
    again = client_for(app, "nat")
    assert admin.post("/admin/users/nat/deactivate", data={"csrf_token": admin.csrf}).status_code == 303
    assert again.get("/api/v1/jobs").status_code == 401
    assert "deactivated" in admin.get("/admin/users").get_data(as_text=True)
    assert admin.post("/admin/users/nat/activate", data={"csrf_token": admin.csrf}).status_code == 303
    assert again.get("/api/v1/jobs").status_code == 200
    assert admin.post("/admin/users/boss/deactivate", data={"csrf_token": admin.csrf}).status_code == 409
    plain, _ = _login(app, "nat", "pw-nat-1")
    assert plain.get("/admin/users").status_code == 403
    assert 'href="/admin/users"' not in plain.get("/").get_data(as_text=True)
    assert plain.post("/admin/users/boss/deactivate", data={"csrf_token": plain.csrf}).status_code == 403


def test_password_hashes_match_werkzeugs_both_ways():
    # Users created before app.services.accounts.users hashed with werkzeug.
    from werkzeug.security import check_password_hash, generate_password_hash
    from app.services.accounts.users import hash_password, password_matches
    assert password_matches(generate_password_hash("s3cret"), "s3cret")
    assert not password_matches(generate_password_hash("s3cret"), "s3cret ")
    assert password_matches(generate_password_hash("s3cret", method="pbkdf2:sha256:1000"), "s3cret")
    assert check_password_hash(hash_password("s3cret"), "s3cret")
    assert not password_matches("not a hash", "s3cret")


def test_behind_serves_nginx_each_client_address_counts_alone(server):
    # `serve` puts nginx in front (gunicorn on a unix socket, no peer
    # address): the client's address must come from nginx, not collapse
    # into one shared bucket that would lock everybody out together.
    import base64
    import http.client
    from urllib.parse import urlsplit
    url, instance = server
    creds = dict(line.split(": ", 1) for line in (Path(instance) / "initial-credentials.txt").read_text().splitlines())
    port = urlsplit(url).port

    def status(source: str, password: str, forged: str = "198.51.100.1") -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
        auth = base64.b64encode(f"admin:{password}".encode()).decode()
        conn.request("GET", "/api/v1/jobs", headers={"Authorization": f"Basic {auth}", "X-Forwarded-For": forged})
        code = conn.getresponse().status
        conn.close()
        return code

    # The attacker also forges X-Forwarded-For, differently each time: nginx
    # replaces it (were it believed, every guess would count for a new address
    # and no 429 would ever come). Counts are per gunicorn process locally
    # (memory://), so guess until the process answering is at its budget.
    codes: list[int] = []
    while codes[-3:] != [429] * 3:
        assert len(codes) < 60, codes
        codes.append(status("127.0.0.2", f"guess-{len(codes)}", forged=f"198.51.100.{len(codes)}"))
    assert codes[:10] == [401] * 10
    # Another address is not locked out (were both one bucket, it would be 429 now).
    assert [status("127.0.0.3", creds["password"]) for _ in range(3)] == [200] * 3
