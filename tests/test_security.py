"""Web safety: failed logins throttled, a Content-Security-Policy on every page, a favicon, the admin login
printed with its password, a refused action explained (tests/test_dashboard_live.py)."""
from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.management import call_command
from django.test import Client, override_settings


@pytest.fixture(autouse=True)
def fresh_throttle():
    caches["throttle"].clear()
    yield
    caches["throttle"].clear()


@override_settings(PITR_LOGIN_FAILURES=3, PITR_LOGIN_WINDOW=600)
def test_failed_logins_are_throttled_per_user_and_address(db):
    User.objects.create_user("ops", password="right-password")
    client = Client()
    for _ in range(3):
        response = client.post("/login/", {"username": "ops", "password": "wrong"})
        assert response.status_code == 200 and "did not match" in response.content.decode()
    response = client.post("/login/", {"username": "ops", "password": "right-password"})
    assert response.status_code == 429  # even the right password waits for the window
    assert "too many failed logins for this user name from your address: try again in 10 minutes" in \
        response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another user name from the same address is not locked out by these failures.
    User.objects.create_user("viewer", password="other-password")
    assert client.post("/login/", {"username": "viewer", "password": "other-password"}).status_code == 302
    caches["throttle"].clear()  # the window passed
    assert Client().post("/login/", {"username": "ops", "password": "right-password"}).status_code == 302


def test_admin_login_goes_through_the_throttled_page(db):
    response = Client().get("/admin/login/?next=/admin/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/admin/"


def test_pages_carry_a_content_security_policy(admin_client):
    for url in ("/", "/login/", "/admin/"):
        policy = admin_client.get(url).headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_favicon(admin_client):
    html = admin_client.get("/").content.decode()
    assert 'rel="icon" href="/static/dashboard/favicon.svg"' in html
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"] == "/static/dashboard/favicon.svg"


def test_ensure_admin_prints_password_and_login_url(db):
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    text = out.getvalue()
    line = next(line for line in text.splitlines() if line.startswith("log in at "))
    assert "/login/ as user admin, password " in line and "(kept in " in line
    password = line.split("password ", 1)[1].split(" ", 1)[0]
    assert Client().login(username="admin", password=password)
