"""The security pass of issue 13, kept fixed: one test per defect, on SQLite and on the real PostgreSQL server CI
starts (`db_url`). HTTP level through the ASGI app; the page behaviours are in test_browser.py."""

from __future__ import annotations

from labelkit import PASSWORD, Api, make_app, setup_project

USERS = {"root": "admin", "ann": "labeler", "bob": "labeler"}


# ---------------------------------------------------------------------------------------------- 2: sessions end

def _copy_of_cookie(api: Api) -> Api:
    """A second client holding a copy of `api`'s session cookie (what a stolen or kept cookie is)."""
    other = Api(api.app)
    other.client.cookies.update(api.client.cookies)
    other.token = api.token
    return other


def test_logout_ends_the_session_for_every_copy_of_the_cookie(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    pid = setup_project(admin)
    ann = Api(app).login("ann")
    kept = _copy_of_cookie(ann)
    assert kept.get("/api/me").status_code == 200
    assert ann.post("/api/logout").status_code == 200
    assert kept.get("/api/me").status_code == 401
    assert kept.post(f"/api/projects/{pid}/next").status_code in (401, 403)
    assert Api(app).login("ann").get("/api/me").status_code == 200  # logging in again works


def test_a_new_password_or_deactivation_ends_the_users_sessions(db_url):
    app = make_app(db_url, USERS)
    admin = Api(app).login("root")
    ann, bob = Api(app).login("ann"), Api(app).login("bob")
    ann_id = ann.get("/api/me").json()["id"]
    bob_id = bob.get("/api/me").json()["id"]
    r = admin.patch(f"/api/users/{ann_id}", {"password": "a brand new password"})
    assert r.status_code == 200, r.text
    assert ann.get("/api/me").status_code == 401
    assert bob.get("/api/me").status_code == 200  # only ann's sessions ended
    assert Api(app).login("ann", "a brand new password").get("/api/me").status_code == 200
    assert admin.patch(f"/api/users/{bob_id}", {"active": False}).status_code == 200
    assert bob.get("/api/me").status_code == 401
    assert admin.patch(f"/api/users/{bob_id}", {"active": True}).status_code == 200
    assert bob.get("/api/me").status_code == 401  # re-activating does not bring the old session back
    assert Api(app).login("bob").get("/api/me").status_code == 200


def test_the_html_logout_ends_the_session_too(db_url):
    app = make_app(db_url, USERS)
    ann = Api(app).login("ann")
    kept = _copy_of_cookie(ann)
    r = ann.client.post("/logout", data={"csrf_token": ann.token}, follow_redirects=False)
    assert r.status_code == 303
    assert kept.get("/api/me").status_code == 401
    assert kept.get("/label", follow_redirects=False).status_code == 303  # to the login page


def test_the_database_keeps_no_usable_session_token(db_url):
    from sqlalchemy import select

    from rlhflab.label.models import LoginSession

    app = make_app(db_url, USERS)
    ann = Api(app).login("ann")
    with app.state.ctx.tx() as s:
        digests = list(s.scalars(select(LoginSession.token_sha256)))
    assert len(digests) == 1 and len(digests[0]) == 64
    assert digests[0] not in ann.client.cookies.get("rlhflab_session", "")
