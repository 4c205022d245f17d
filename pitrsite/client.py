"""`scripts/pitr restore|backup ARGS`: hand ARGS to the running web service, follow the job, print its end.

Standard library only, run as `/usr/bin/python3 -I -S pitrsite/client.py restore ARGS` (it imports nothing of
the project, nor Django): a few hundredths of a second, where `manage.py restore` first spends about a second
starting Python and Django. The web service parses ARGS with the management command's own parser and queues
the job for the Celery worker (dashboard/api.py); this prints its steps as `manage.py` does, then the same
result: the same lines, or with --json the same JSON document, the same one-line errors and exit statuses
(0 done, 1 failed, 2 bad arguments).

Where the web service does not answer (nothing listens on its port), or no API token exists yet, it runs
`manage.py restore ARGS` in this process instead, saying so on stderr. Ctrl-C cancels the job.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"  # settings.PITR_HOST: loopback only, by design
WEB_PORT = 58000  # PITR_WEB_PORT's default; pitrsite/settings.py reads it from here
TOKEN_FILE = ("secrets", "api_token")  # pitrsite/apitoken.py: home.SECRETS / FILE
WAIT = 5.0  # s the web service may hold a look at the job until it ends or starts a step (dashboard/api.py)
POLL = 0.05  # s before the next look, after one that saw no change
COMMANDS = ("restore", "backup")


def dotenv(path: str) -> dict[str, str]:
    """KEY=VALUE lines of a .env file, as settings read them (a malformed line is theirs to report)."""
    found: dict[str, str] = {}
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return found
    for raw in lines:
        line = raw.strip()
        if line.startswith("export "):
            line = line[len("export "):]
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def settings() -> dict[str, str]:
    """The environment over .env (PITR_ENV_FILE, else the project's .env), as pitrsite/settings.py does."""
    return {**dotenv(os.environ.get("PITR_ENV_FILE", os.path.join(PROJECT, ".env"))), **os.environ}


def home(env: dict[str, str]) -> str:
    return os.path.realpath(env.get("PITR_HOME") or os.path.join(PROJECT, "var"))


def port(env: dict[str, str]) -> int:
    try:
        return int(env.get("PITR_WEB_PORT") or WEB_PORT)
    except ValueError:
        return WEB_PORT  # manage.py, run instead, says what is wrong with it


def in_process(name: str, args: list[str], why: str = "") -> None:  # never returns (exec)
    """Run `manage.py NAME ARGS` here (exec: its output, exit status and Ctrl-C are this command's)."""
    if why:
        sys.stderr.write(f"{why}: running manage.py {name} in this process\n")
        sys.stderr.flush()
    python = os.path.join(PROJECT, ".venv", "bin", "python")
    if not os.access(python, os.X_OK):
        sys.stderr.write(f"no virtualenv at {os.path.dirname(os.path.dirname(python))}: run scripts/pitr up\n")
        sys.exit(1)
    os.execv(python, [python, os.path.join(PROJECT, "manage.py"), name, *args])


class Api:
    def __init__(self, host: str, port: int, token: str):
        self.host, self.port, self.token = host, port, token

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One HTTP/1.0 request on its own connection, which the server closes after its answer. A socket,
        not http.client: importing that module (and the email parser it brings) took 0.03 s of every start."""
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.0\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(head + data)
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        header, _, raw = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            status = int(header.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"the web service answered {header[:60]!r}, not HTTP") from None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"error": f"the web service answered HTTP {status}, not JSON", "exit": 1}


def end(answer: dict, as_json: bool) -> int:
    """Print a refusal or a finished job as manage.py does; its exit status."""
    status = answer.get("exit", 1)
    if as_json and "document" in answer:
        sys.stdout.write(json.dumps(answer["document"], indent=2) + "\n")
    elif not as_json:
        for line in answer.get("lines") or []:
            sys.stdout.write(line + "\n")
    if answer.get("error"):
        # An argument error is argparse's line; anything else is Django's `CommandError: ...`.
        sys.stderr.write((answer["error"] if status == 2 else f"CommandError: {answer['error']}") + "\n")
    return status


def follow(api: Api, kind: str, pk: int, as_json: bool) -> int:
    """Step lines on stderr as they start (ConsoleReporter's, without a terminal), then the end."""
    shown = 0
    while True:
        code, answer = api.call("GET", f"/api/jobs/{kind}/{pk}?wait={WAIT}&seen={shown}")
        if code != 200:
            return end({"error": answer.get("error") or f"HTTP {code} for {kind} #{pk}", "exit": 1}, False)
        for step in answer["steps"][shown:]:
            if step.get("name"):
                sys.stderr.write(f"{step['name']}...\n")
        sys.stderr.flush()
        if not answer["active"]:
            return end(answer, as_json)
        if len(answer["steps"]) == shown:
            time.sleep(POLL)  # the wait ran out
        shown = len(answer["steps"])


def cancel(api: Api, kind: str, pk: int) -> int:
    try:
        code, answer = api.call("POST", f"/api/jobs/{kind}/{pk}/cancel")
    except OSError as exc:
        code, answer = 0, {"error": str(exc)}
    if code == 200 and answer.get("cancelled"):
        sys.stderr.write(f"interrupted: {kind} #{pk} cancelled, its tools stopped\n")
    elif code == 200:
        sys.stderr.write(f"interrupted: {kind} #{pk} had ended already\n")
    else:
        sys.stderr.write(f"interrupted: {kind} #{pk} could not be cancelled ({answer.get('error')}): it goes on in "
                         "the worker; cancel it from the dashboard\n")
    return 130


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        sys.stderr.write(f"usage: client.py {{{'|'.join(COMMANDS)}}} [ARGS...]\n")
        return 2
    name, args = argv[0], argv[1:]
    if "-h" in args or "--help" in args:
        in_process(name, args)  # the help text is the command's own
    env = settings()
    token_path = os.path.join(home(env), *TOKEN_FILE)
    try:
        with open(token_path) as fh:
            token = fh.read().strip()
    except OSError:
        in_process(name, args, f"no API token at {token_path} (the services were not started)")
    api = Api(HOST, port(env), token)
    try:
        code, answer = api.call("POST", f"/api/commands/{name}", {"argv": args})
    except ConnectionRefusedError:
        in_process(name, args, f"the web service at http://{HOST}:{api.port}/ does not answer")
    except OSError as exc:  # it took the connection, then failed: the job may or may not be queued
        sys.stderr.write(f"the web service at http://{HOST}:{api.port}/ failed ({exc}): see the dashboard's jobs\n")
        return 1
    as_json = "--json" in args
    if code != 202:
        return end(answer, as_json)
    kind, pk = answer["kind"], answer["id"]
    try:
        return follow(api, kind, pk, as_json)
    except KeyboardInterrupt:
        return cancel(api, kind, pk)
    except OSError as exc:
        sys.stderr.write(f"lost the web service while following {kind} #{pk} ({exc}): the job goes on in the "
                         "worker; see the dashboard\n")
        return 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # before the job had an id: the request may or may not have queued it
        sys.stderr.write("interrupted before the job was known: see the dashboard's jobs\n")
        sys.exit(130)
