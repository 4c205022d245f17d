"""Log in to pgAdmin as a browser does: its login page's CSRF token, then the form."""
from __future__ import annotations

import http.cookiejar
import re
import urllib.parse
import urllib.request


def logs_in(base: str, email: str, password: str) -> bool:
    """True when pgAdmin accepts the login: its browser page then answers instead of sending us to /login."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{base}/login", timeout=30) as response:
        page = response.read().decode(errors="replace")
    token = re.search(r'csrfToken"\s*:\s*"([^"]+)"', page)
    assert token, "no CSRF token on pgAdmin's login page"
    form = urllib.parse.urlencode({"email": email, "password": password, "csrf_token": token[1]}).encode()
    with opener.open(f"{base}/authenticate/login", data=form, timeout=30):
        pass
    with opener.open(f"{base}/browser/", timeout=30) as response:
        return "/login" not in response.geturl()
