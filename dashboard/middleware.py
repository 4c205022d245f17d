"""Every dashboard page is about one server: ?server=NAME chooses it (kept in the session), else the demo's."""
from __future__ import annotations

from typing import Callable

from django.http import HttpRequest, HttpResponse

from fleet import servers
from fleet.models import Server

SESSION_KEY = "pitr_server"


class ServerScope:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = request.GET.get("server")
        if name is not None and hasattr(request, "session"):
            request.session[SESSION_KEY] = name
        elif hasattr(request, "session"):
            name = request.session.get(SESSION_KEY)
        server = Server.objects.filter(name=name).first() if name else None
        request.pitr_server = server  # type: ignore[attr-defined]
        if server is None:
            return self.get_response(request)
        with servers.using(server):
            return self.get_response(request)
