"""Serving policy: localhost by default, a login for anything wider, credentials never from argv, failed
logins slowed down, Host headers checked. (The launched app is tested in tests/app.)"""
import asyncio
import time

import pytest

from launch import (AUTH_ENV, HostCheck, LoginThrottle, load_credentials, main, parse_args, parse_credentials,
                    serving_policy)


def test_credentials_come_from_the_environment_or_a_file(tmp_path):
    assert load_credentials(None, {}) is None
    assert load_credentials(None, {AUTH_ENV: "ann:s3cret:with:colons"}) == {"ann": "s3cret:with:colons"}
    file = tmp_path / "users"
    file.write_text("# who may log in\nann:one\n\nbob:two\n")
    file.chmod(0o600)
    assert load_credentials(str(file), {AUTH_ENV: "ignored:x"}) == {"ann": "one", "bob": "two"}


@pytest.mark.parametrize("text", ["", "# only a comment", "no-colon", ":nopassword", "user:"])
def test_bad_credentials_are_refused(text):
    with pytest.raises(SystemExit):
        parse_credentials(text, "users")


def test_a_password_on_the_command_line_is_refused():
    args = parse_args(["--auth", "ann:secret"])
    with pytest.raises(SystemExit) as caught:
        load_credentials(args.auth_file, {}, argv_auth=args.auth)
    assert "process list" in str(caught.value) and "secret" not in str(caught.value)
    with pytest.raises(SystemExit):
        main(["--auth", "ann:secret", "--port", "1"])


@pytest.mark.parametrize("host,share", [("0.0.0.0", False), ("192.168.1.5", False), ("::", False), (None, True),
                                        ("127.0.0.1", True)])
def test_serving_beyond_this_machine_needs_a_login(host, share):
    with pytest.raises(SystemExit, match="requires a login"):
        serving_policy(host, share, has_login=False)
    assert serving_policy(host, share, has_login=True)["host"] == (host or "127.0.0.1")


def test_main_refuses_an_open_bind_before_loading_anything(monkeypatch):
    monkeypatch.delenv(AUTH_ENV, raising=False)
    with pytest.raises(SystemExit, match="requires a login"):
        main(["--host", "0.0.0.0", "--port", "1"])


def test_allowed_host_names():
    assert set(serving_policy(None, False, False)["allowed_hosts"]) == {"127.0.0.1", "localhost", "::1"}
    assert "notes.lab" in serving_policy(None, False, False, ["notes.lab"])["allowed_hosts"]
    assert serving_policy("0.0.0.0", False, True)["allowed_hosts"] is None
    assert serving_policy(None, True, True)["allowed_hosts"] is None
    assert "10.0.0.2" in serving_policy("10.0.0.2", False, True, ["notes.lab"])["allowed_hosts"]


@pytest.mark.parametrize("header,name", [("127.0.0.1:7860", "127.0.0.1"), ("LOCALHOST", "localhost"),
                                         ("[::1]:7860", "::1"), ("evil.example", "evil.example"),
                                         ("evil.example:7860", "evil.example"), ("", "")])
def test_host_header_parsing(header, name):
    assert HostCheck.host_name(header) == name


def test_host_check_refuses_other_names():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    async def request(host: bytes | None, kind="http"):
        sent = []

        async def send(message):
            sent.append(message)

        headers = [(b"host", host)] if host is not None else []
        await HostCheck(app, ["127.0.0.1", "localhost"])({"type": kind, "headers": headers}, None, send)
        return sent

    assert asyncio.run(request(b"127.0.0.1:7860")) == [] and seen == ["http"]
    refused = asyncio.run(request(b"evil.example"))
    assert refused[0]["status"] == 400 and b"Invalid host header" in refused[1]["body"]
    assert asyncio.run(request(None))[0]["status"] == 400
    assert asyncio.run(request(b"evil.example", "websocket")) == [{"type": "websocket.close", "code": 1008}]
    assert seen == ["http"]


def test_failed_logins_are_slowed_down():
    throttle = LoginThrottle({"ann": "right"}, base_delay=0.05, max_delay=0.2)

    async def attempts():
        results, waits = [], []
        for password in ["wrong", "wrong", "wrong", "wrong", "right", "right"]:
            start = time.monotonic()
            results.append(await throttle.check("ann", password))
            waits.append(time.monotonic() - start)
        return results, waits

    results, waits = asyncio.run(attempts())
    assert results == [False, False, False, False, True, True]
    assert waits[0] < 0.04  # the first try is not slowed
    assert waits[1] >= 0.05 and waits[2] >= 0.1 and waits[3] >= 0.2 and waits[4] >= 0.2  # doubling, capped
    assert waits[5] < waits[4]  # a success forgets the failures
    assert throttle.delay("ann") == 0


def test_unknown_users_share_one_entry_and_never_log_in():
    throttle = LoginThrottle({"ann": "right"}, base_delay=0.0)
    for name in ("x", "y", "z", ""):
        assert asyncio.run(throttle.check(name, "\0" * 16)) is False
    assert set(throttle.failures) == {LoginThrottle.UNKNOWN, LoginThrottle.EVERYONE}


def test_the_check_gradio_gets_is_a_coroutine_function():
    import inspect

    # Gradio awaits the login check only when it is a coroutine function; a plain callable returning a
    # coroutine would be truthy and let everyone in.
    assert inspect.iscoroutinefunction(LoginThrottle({"a": "b"}).check)
