"""Login throttling that cannot be dodged, over real HTTP against the app: a form with its
fields twice (a decoy name first), an attacker's own successful logins in between, guesses
spread over many addresses behind a trusted proxy, and a forged X-Forwarded-For from a client
that is no proxy. The throttle counts what the authenticator checks, from where it came."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from factories import write_fake_run

from refsav_pipeline.pipeline.cli import free_port
from refsav_pipeline.review.app import ReviewApp, wait_until_up
from refsav_pipeline.review.login_guard import LoginThrottle
from refsav_pipeline.review.paths import decisions_path
from refsav_pipeline.review.select import select_and_write
from refsav_pipeline.review.users import add_user

BLOCKED = 429


@pytest.fixture(scope="module")
def run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("login-run")
    write_fake_run(synth_root, out)
    select_and_write(out, count=20, seed=0, double_review=0.0)
    users = out / "users.txt"
    for name, role in (("alice", "reviewer"), ("bob", "reviewer"), ("judy", "adjudicator")):
        add_user(users, name, f"{name}-pw", iterations=1000, role=role)
    return out, users


@contextmanager
def app(run: tuple[Path, Path], proxies: str = "") -> Iterator[httpx.Client]:
    """A fresh app (fresh counts) and a client for it."""
    out, users = run
    port = free_port()
    demo = ReviewApp(out, users).launch("127.0.0.1", port, prevent_thread_lock=True,
                                        quiet=True, forwarded_allow_ips=proxies)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/")
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        demo.close()


def urlencoded(client: httpx.Client, fields: list[tuple[str, str]], via: str | None = None
               ) -> httpx.Response:
    """POST /login with the fields exactly in this order (repeats kept)."""
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if via:
        headers["x-forwarded-for"] = via
    body = "&".join(f"{k}={v}" for k, v in fields)
    return client.post("/login", content=body.encode(), headers=headers)


def multipart(client: httpx.Client, fields: list[tuple[str, str]], via: str | None = None
              ) -> httpx.Response:
    boundary = "rvboundary7d1"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in fields) + f"--{boundary}--\r\n"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    if via:
        headers["x-forwarded-for"] = via
    return client.post("/login", content=body.encode(), headers=headers)


def login(client: httpx.Client, name: str, password: str, via: str | None = None
          ) -> httpx.Response:
    return urlencoded(client, [("username", name), ("password", password)], via)


Post = Callable[[httpx.Client, list[tuple[str, str]], str | None], httpx.Response]


@pytest.mark.parametrize("post", [urlencoded, multipart], ids=["urlencoded", "multipart"])
def test_a_decoy_name_first_counts_against_the_name_checked(
        run, post: Post, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="refsav.review.login")
    # a trusted proxy, each guess from another address: only the per-user count can block
    with app(run, proxies="127.0.0.1") as client:
        codes = [post(client, [("username", f"decoy{i}"), ("password", "x"),
                               ("username", "alice"), ("password", f"guess{i}")],
                      f"10.1.0.{i}").status_code for i in range(5)]
        assert codes == [400] * 5
        right = post(client, [("username", "decoy9"), ("password", "x"),
                              ("username", "alice"), ("password", "alice-pw")], "10.1.0.9")
        assert right.status_code == BLOCKED and right.headers["retry-after"] == "1"
        # the decoy names were never tried: nothing counts against them
        assert post(client, [("username", "decoy0"), ("password", "x")],
                    "10.1.1.1").status_code == 400
    failed = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert all("user='alice'" in m for m in failed[:5]), failed
    assert "from 10.1.0.0" in failed[0] and "from 10.1.0.4" in failed[4]


def test_own_successes_never_clear_an_address(run) -> None:
    # bob guesses other people's passwords and logs into his own account every 4th request
    with app(run) as client:
        codes = []
        targets = ["alice", "judy", "nobody"]
        for i in range(12):
            if i % 4 == 3:
                codes.append(login(client, "bob", "bob-pw").status_code)
            else:
                codes.append(login(client, targets[i % 3], f"guess{i}").status_code)
            if codes[-1] == BLOCKED:
                break
        # 5 failures from this address (against three names), bob's 2 successes between them
        assert codes == [400, 400, 400, 200, 400, 400, BLOCKED], codes
        assert login(client, "bob", "bob-pw").status_code == BLOCKED  # him too, for now


def test_forged_forwarded_for_from_a_client_is_ignored(run,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="refsav.review.login")
    with app(run) as client:  # no trusted proxy (the default)
        codes = [login(client, f"user{i}", "x", via=f"10.2.0.{i}").status_code
                 for i in range(5)]
        assert codes == [400] * 5
        assert login(client, "alice", "alice-pw", via="10.2.9.9").status_code == BLOCKED
    failed = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert failed and all("from 127.0.0.1" in m for m in failed), failed


def test_many_addresses_behind_a_trusted_proxy(run) -> None:
    with app(run, proxies="127.0.0.1") as client:
        # one user guessed from five addresses: blocked from a sixth
        assert [login(client, "alice", "x", via=f"10.3.0.{i}").status_code
                for i in range(5)] == [400] * 5
        assert login(client, "alice", "alice-pw", via="10.3.0.200").status_code == BLOCKED
        # one address spraying five names: that address is blocked for any name ...
        assert [login(client, f"user{i}", "x", via="10.3.1.1").status_code
                for i in range(5)] == [400] * 5
        assert login(client, "bob", "bob-pw", via="10.3.1.1").status_code == BLOCKED
        # ... and the proxy's other clients are not: each is its own address
        assert login(client, "bob", "bob-pw", via="10.3.1.2").status_code == 200
        # the proxy's client is the last untrusted hop, whatever the client wrote before it
        assert login(client, "judy", "judy-pw",
                     via="10.3.1.1, 10.3.1.3").status_code == 200


def test_a_success_clears_only_its_own_pair() -> None:
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(3):
        throttle.failure("bob", "10.0.0.1")  # bob's own typos
    for _ in range(3):
        throttle.failure("alice", "10.0.0.1")  # guesses at alice from bob's machine
    throttle.failure("alice", "10.0.0.2")
    throttle.success("bob", "10.0.0.1")
    # the address still holds its 3 failures against alice; alice her 4 from two addresses
    assert throttle.failure("carol", "10.0.0.1") == (1, 0)
    assert throttle.failure("dave", "10.0.0.1") == (1, 1)  # the address's 5th failure
    assert throttle.retry_after("bob", "10.0.0.1") == 1
    assert throttle.retry_after("alice", "10.0.0.9") == 0
    assert throttle.failure("alice", "10.0.0.9") == (5, 1)
    assert throttle.retry_after("alice", "10.0.0.8") == 1
    throttle.success("alice", "10.0.0.1")  # alice's 3 from there gone, 2 elsewhere remain
    assert throttle.retry_after("alice", "10.0.0.8") == 0
    assert throttle.failure("alice", "10.0.0.8") == (3, 0)


def test_sessions_survive_a_restart_and_logout_ends_them(run) -> None:
    out, users = run
    with app(run) as client:
        assert login(client, "alice", "alice-pw").status_code == 200
        cookies = dict(client.cookies)
        assert client.get("/config").status_code == 200
    # a new process on the same run folder (new port): the same cookie still logs alice in
    with app(run) as client:
        client.cookies.update(cookies)
        assert client.get("/config").status_code == 200
        assert client.get("/gradio_api/token").json()["user"] == "alice"
        client.get("/logout")  # revoked for good, also across restarts
        client.cookies.update(cookies)
        assert client.get("/config").status_code == 401
    with app(run) as client:
        client.cookies.update(cookies)
        assert client.get("/config").status_code == 401
    conn = sqlite3.connect(decisions_path(out))
    stored = conn.execute("SELECT token_hash FROM sessions").fetchall()
    conn.close()
    assert stored and all(v not in {h for (h,) in stored} for v in cookies.values())
