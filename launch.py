"""`python launch.py`: the workbench on 127.0.0.1:7860, on the default workspace with the bundled sample.

The page is served at once; importing the sample and installing shipped demo checkpoints run in a
background thread and the page shows their progress.

Serving is private by default: the app binds to 127.0.0.1 and answers only requests whose Host header
names this machine (a web page elsewhere cannot reach it through DNS rebinding). Binding to another
address (`--host`) or asking for a public link (`--share`) requires a login, whose credentials come from
the NOTELLM2_AUTH environment variable or a file (`--auth-file`), never from the command line, where
every user of the machine could read them in the process list. Failed logins are slowed down."""
from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network to report to, and no reason to

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTH_ENV = "NOTELLM2_AUTH"
MAX_UPLOAD_MB = 256  # one uploaded file (notes, pairs, an images zip, a query image)
QUEUE_SIZE = 32  # requests waiting for a worker thread; more are refused at once ("queue is full")
UPLOAD_CACHE = (900, 3600)  # every 15 min, delete uploads and generated files older than an hour


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="NoteLLM-2 workbench (Gradio)")
    parser.add_argument("--workspace", default=None, help="workspace folder (default data/workspace)")
    parser.add_argument("--host", default=None,
                        help="address to bind (default 127.0.0.1, this machine only); anything else, 0.0.0.0 "
                             f"included, requires a login ({AUTH_ENV} or --auth-file)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (requires a login)")
    parser.add_argument("--auth-file", default=None, metavar="FILE",
                        help=f"login credentials, one USER:PASSWORD a line (or set {AUTH_ENV}=USER:PASSWORD)")
    parser.add_argument("--auth", default=None, help=argparse.SUPPRESS)  # refused: see load_credentials
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name browsers may use to reach the app besides localhost (repeatable); "
                             "with --host set to another address and no --allowed-host, any name is accepted")
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help="largest file one upload may be")
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE, help="requests that may wait at once")
    parser.add_argument("--no-browser", action="store_true", help="(default) kept for symmetry; never opens one")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ credentials
def parse_credentials(text: str, source: str) -> dict[str, str]:
    """USER:PASSWORD lines (blank lines and # comments skipped) -> {user: password}."""
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise SystemExit(f"error: {source} line {number}: expected USER:PASSWORD")
        users[user.strip()] = password
    if not users:
        raise SystemExit(f"error: {source} holds no USER:PASSWORD line")
    return users


def load_credentials(auth_file: str | None = None, environ=None, argv_auth: str | None = None) -> dict[str, str] | None:
    """The login's users, from --auth-file or the NOTELLM2_AUTH variable; None when neither is set."""
    environ = os.environ if environ is None else environ
    if argv_auth is not None:
        raise SystemExit(f"error: --auth would show the password in the process list; put USER:PASSWORD in "
                         f"{AUTH_ENV} or in a file given with --auth-file")
    if auth_file:
        path = Path(auth_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise SystemExit(f"error: cannot read --auth-file {path.name}: {error.strerror or error}") from None
        if os.name == "posix" and path.stat().st_mode & 0o077:
            print(f"warning: {path.name} is readable by other users; chmod 600 it", file=sys.stderr)
        return parse_credentials(text, path.name)
    if environ.get(AUTH_ENV):
        return parse_credentials(environ[AUTH_ENV], AUTH_ENV)
    return None


class LoginThrottle:
    """Gradio's login check (pass `check`), slowed down after failures: each failed attempt for a user
    (and, more gently, for everyone) doubles the wait before the next answer, up to `max_delay` seconds, so
    guessing is slow while one typo costs little. Async: waiting never blocks the server's event loop."""

    UNKNOWN = "\0unknown"  # every unknown user name shares one entry, so made-up names cannot grow the tables
    EVERYONE = "\0all"

    def __init__(self, users: dict[str, str], base_delay: float = 0.5, max_delay: float = 10.0,
                 forget_after: float = 900.0):
        self.users = dict(users)
        self.base_delay, self.max_delay, self.forget_after = base_delay, max_delay, forget_after
        self.failures: dict[str, tuple[int, float]] = {}  # key -> (count, time of the last failure)
        self._locks: dict[str, asyncio.Lock] = {}

    def delay(self, key: str) -> float:
        count, last = self.failures.get(key, (0, 0.0))
        if not count or time.monotonic() - last > self.forget_after:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** (count - 1))

    def _fail(self, key: str) -> None:
        count, last = self.failures.get(key, (0, 0.0))
        if time.monotonic() - last > self.forget_after:
            count = 0
        self.failures[key] = (count + 1, time.monotonic())

    async def check(self, username: str, password: str) -> bool:
        key = username if username in self.users else self.UNKNOWN
        # Attempts on one user queue up, so parallel guesses do not skip the wait.
        async with self._locks.setdefault(key, asyncio.Lock()):
            await asyncio.sleep(max(self.delay(key), self.delay(self.EVERYONE) / 4))
            expected = self.users.get(username)
            # Compare even for an unknown user, so the answer's timing does not tell which users exist.
            same = hmac.compare_digest((password or "").encode("utf-8"), (expected or "\0" * 16).encode("utf-8"))
            if same and expected is not None:
                self.failures.pop(key, None)
                return True
            self._fail(key)
            self._fail(self.EVERYONE)
            return False


# ------------------------------------------------------------------------------------------ host check
class HostCheck:
    """ASGI middleware: refuse (400) any HTTP or websocket request whose Host header is not an allowed name.

    A page on another site can make a browser resolve its own name to 127.0.0.1 (DNS rebinding) and then
    talk to the app as if same-origin; the Host header still carries that other name."""

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = {name.lower().strip("[]") for name in allowed}

    @staticmethod
    def host_name(value: str) -> str:
        value = value.strip().lower()
        if value.startswith("["):  # [::1]:7860
            return value[1:value.find("]")] if "]" in value else value
        return value.rsplit(":", 1)[0] if value.count(":") == 1 else value

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = self.host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"Invalid host header: this app answers only to " + ", ".join(sorted(self.allowed)).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def serving_policy(host: str | None, share: bool, has_login: bool, allowed_hosts=()) -> dict:
    """What a launch with these options may do: the bind address and the host names accepted (None: any).
    Refuses (SystemExit) to serve beyond this machine without a login."""
    bind = host or "127.0.0.1"
    local = bind in LOCAL_HOSTS
    if (share or not local) and not has_login:
        where = "a public share link" if share else f"address {bind}"
        raise SystemExit(f"error: serving on {where} requires a login: set {AUTH_ENV}=USER:PASSWORD or give "
                         "--auth-file FILE (one USER:PASSWORD a line)")
    if share:
        hosts = None  # the share tunnel forwards its own public host name
    elif local or allowed_hosts:
        hosts = list(LOCAL_HOSTS) + list(allowed_hosts) + ([bind] if not local else [])
    else:
        hosts = None  # bound to another address: the names it is reached by are the user's; the login guards it
    return {"host": bind, "allowed_hosts": hosts}


def serve(workspace=None, host=None, port=7860, share=False, auth=None, block=True, backend=None,
          allowed_hosts=(), max_upload_mb: int = MAX_UPLOAD_MB, queue_size: int = QUEUE_SIZE):
    """`auth`: {user: password}, checked through a LoginThrottle. Returns (demo, backend)."""
    from starlette.middleware import Middleware

    from app.backend import Backend
    from app.main import build_app, launch_kwargs

    policy = serving_policy(host, share, bool(auth), allowed_hosts)
    login = LoginThrottle(auth).check if auth else None
    if backend is None:
        backend = Backend(workspace)
        backend.start_background()
    demo = build_app(backend)
    demo.queue(default_concurrency_limit=2, max_size=queue_size)
    demo.delete_cache = UPLOAD_CACHE  # uploads (and generated files) do not pile up in the temp folder
    middleware = [Middleware(HostCheck, allowed=policy["allowed_hosts"])] if policy["allowed_hosts"] else []
    demo.launch(server_name=policy["host"], server_port=port, share=share, auth=login,
                # show_error=False: an unexpected exception's text could quote user input, and Gradio renders
                # error toasts as HTML; the tabs report expected errors themselves, escaped.
                prevent_thread_lock=not block, show_error=False, footer_links=["api", "gradio"],
                max_file_size=f"{int(max_upload_mb)}mb", app_kwargs={"middleware": middleware},
                allowed_paths=[str(backend.workspace.images_dir)], **launch_kwargs())
    return demo, backend


def main(argv=None) -> int:
    args = parse_args(argv)
    users = load_credentials(args.auth_file, argv_auth=args.auth)
    serving_policy(args.host, args.share, bool(users), args.allowed_host)  # refuse before loading anything
    serve(args.workspace, args.host, args.port, args.share, users, allowed_hosts=args.allowed_host,
          max_upload_mb=args.max_upload_mb, queue_size=args.queue_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
