"""/admin/users: users and their API tokens for administrators, with
deactivate/activate, end sessions and token revocation. Thin: parse, call
``app.services.accounts.users``, render. Every form carries the CSRF token (the guard
checks it on every session-authenticated POST)."""
from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, render_template, url_for

from app.services.accounts import users
from app.web.auth import current_user
from app.web.context import ctx
from app.web.errors import ApiError
from app.web.forms import ActionForm

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _admin() -> dict:
    user = current_user()
    if not user["admin"]:
        raise ApiError(403, "forbidden", "Only administrators manage users.")
    return user


@bp.get("/users")
def users_page():
    """Every user with their tokens and the buttons that revoke access."""
    _admin()
    return render_template("web/admin_users.html", users=users.listing(ctx()), form=ActionForm(),
                           cache_s=int(users.CACHE_SECONDS))


@bp.post("/users/<name>/<action>")
def user_action(name: str, action: str) -> Response:
    """deactivate, activate, end-sessions or revoke-tokens (all of them) for ``name``."""
    me = _admin()
    c = ctx()
    if action == "deactivate":
        if name == me["name"]:
            raise ApiError(409, "conflict", "You cannot deactivate yourself.")
        users.set_active(c, name, False)
        flash(f"Deactivated {name}: their tokens, password and sessions no longer work; their jobs are kept.")
    elif action == "activate":
        users.set_active(c, name, True)
        flash(f"Activated {name}.")
    elif action == "end-sessions":
        users.end_sessions(c, name)
        flash(f"Ended every browser session of {name}.")
    elif action == "revoke-tokens":
        flash(f"Revoked {users.revoke_token(c, name, None)} token(s) of {name}.")
    else:
        raise ApiError(404, "not_found", "No such user action.")
    return redirect(url_for("admin.users_page"), code=303)


@bp.post("/users/<name>/tokens/<prefix>/revoke")
def revoke_token(name: str, prefix: str) -> Response:
    """Revoke one token of ``name``, named by its prefix."""
    _admin()
    users.revoke_token(ctx(), name, prefix)
    flash(f"Revoked token {prefix}… of {name}.")
    return redirect(url_for("admin.users_page"), code=303)
