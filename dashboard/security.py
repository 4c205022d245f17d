"""What the web server adds for safety: a Content-Security-Policy, and failed logins throttled.

Throttling uses Django's own means (a cache shared by the web workers of this host, under the data home):
after PITR_LOGIN_FAILURES failed attempts for one user name from one address within PITR_LOGIN_WINDOW
seconds, that pair is refused until the window passes, and the page says how long.
"""
from __future__ import annotations

from typing import Callable

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse

# Scripts and styles come from our own static files; inline style attributes size the progress bars.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def csp_middleware(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response
    return middleware


def _key(request: HttpRequest) -> str:
    username = (request.POST.get("username") or "").strip().lower()[:150]
    return f"login-failures:{request.META.get('REMOTE_ADDR', '')}:{username}"


class ThrottledLoginView(auth_views.LoginView):
    template_name = "dashboard/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        cache = caches["throttle"]
        key = _key(request)
        if (cache.get(key) or 0) >= settings.PITR_LOGIN_FAILURES:
            form = self.get_form()
            minutes = max(1, round(settings.PITR_LOGIN_WINDOW / 60))
            return self.render_to_response(self.get_context_data(
                form=form, throttled=f"too many failed logins for this user name from your address: "
                                     f"try again in {minutes} minute{'s' if minutes != 1 else ''}"), status=429)
        response = super().post(request, *args, **kwargs)
        if response.status_code == 200:  # the form came back: the password did not match
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, settings.PITR_LOGIN_WINDOW)
        else:
            cache.delete(key)
        return response
