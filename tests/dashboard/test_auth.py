"""Login tokens, sessions and CSRF: signed, expiring, one-time, bound to a member and a server."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from starlette.testclient import TestClient

from bot.config import Settings
from bot.dashboard import login_link
from bot.dashboard.auth import LOGIN_TTL, SESSION_TTL, Auth
from bot.dashboard.errors import AuthError
from bot.dashboard.web import SECURITY_HEADERS, SESSION_COOKIE
from tests.dashboard.conftest import GUILD, MOD, Clock, csrf_of, sign_in


def test_login_link_round_trips_and_names_member_and_server(settings: Settings) -> None:
    link = login_link(settings, MOD, GUILD, "https://mod.example.org/")
    assert link.startswith("https://mod.example.org/login?token=")
    grant = Auth.from_settings(settings).read_login(parse_qs(urlparse(link).query)["token"][0])
    assert (grant.user_id, grant.guild_id, grant.admin) == (MOD, GUILD, False)
    assert (settings.keys_dir / "dashboard.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="base_url"):
        login_link(settings, MOD, GUILD, "javascript:alert(1)")
    with pytest.raises(ValueError, match="guild_id"):
        login_link(settings, MOD, " ", "http://x")


def test_tampered_and_cross_purpose_tokens_are_refused(auth: Auth) -> None:
    token = auth.login_token(MOD, GUILD)
    body, mac = token.split(".")
    for bad in (body + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"), "x" + token, "nodot", "", "a.b"):
        with pytest.raises(AuthError, match="not valid"):
            auth.read_login(bad)
    _, cookie = auth.open_session(auth.read_login(token))
    with pytest.raises(AuthError):
        auth.read_login(cookie)  # a session cookie is no login token...
    with pytest.raises(AuthError):
        auth.read_session(token)  # ...and a login token no session
    other = Auth(b"k" * 32)
    with pytest.raises(AuthError):
        other.read_login(token)


def test_tokens_and_sessions_expire(auth: Auth, clock: Clock) -> None:
    token = auth.login_token(MOD, GUILD)
    session, cookie = auth.open_session(auth.read_login(token))
    clock.now += LOGIN_TTL + 1
    with pytest.raises(AuthError, match="expired"):
        auth.read_login(token)
    assert auth.read_session(cookie) == session
    clock.now += SESSION_TTL
    with pytest.raises(AuthError, match="expired"):
        auth.read_session(cookie)


def test_login_works_once(client: TestClient, auth: Auth) -> None:
    token = auth.login_token(MOD, GUILD)
    page = client.get("/login", params={"token": token})
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    first = client.post("/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/reviews"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    client.cookies.clear()
    page = client.get("/login", params={"token": token})
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    again = client.post("/login", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert again.status_code == 401 and "used already" in again.text
    assert SESSION_COOKIE not in again.cookies


def test_login_page_does_not_use_the_token(client: TestClient, auth: Auth) -> None:
    token = auth.login_token(MOD, GUILD)
    for _ in range(3):  # a chat app's link preview fetching it must not spend it
        assert client.get("/login", params={"token": token}).status_code == 200
    sign_in(client, auth)


def test_expired_tampered_or_missing_login(client: TestClient, auth: Auth, clock: Clock) -> None:
    token = auth.login_token(MOD, GUILD)
    assert client.get("/login", params={"token": token + "x"}).status_code == 401
    clock.now += LOGIN_TTL + 1
    expired = client.get("/login", params={"token": token})
    assert expired.status_code == 401 and "expired" in expired.text
    assert client.get("/login").status_code == 401


def test_login_post_needs_its_form_token(client: TestClient, auth: Auth) -> None:
    token = auth.login_token(MOD, GUILD)
    client.get("/login", params={"token": token})
    assert client.post("/login", data={"token": token}, follow_redirects=False).status_code == 403
    assert client.post("/login", data={"token": token, "csrf": "forged"}, follow_redirects=False).status_code == 403


def test_pages_need_a_session(client: TestClient, auth: Auth, clock: Clock) -> None:
    for path in ("/", "/reviews", "/jobs", "/gallery", "/audit", "/audit.csv", "/protected", "/metrics"):
        assert client.get(path, follow_redirects=False).status_code == 401, path
    sign_in(client, auth)
    assert client.get("/reviews").status_code == 200
    tampered = client.cookies[SESSION_COOKIE][:-3] + "abc"
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, tampered)
    assert client.get("/reviews").status_code == 401
    client.cookies.clear()
    sign_in(client, auth)
    clock.now += SESSION_TTL + 1
    expired = client.get("/reviews")
    assert expired.status_code == 401 and "expired" in expired.text


@pytest.mark.parametrize("csrf", [None, "", "wrong"])
def test_every_form_checks_csrf(client: TestClient, auth: Auth, seeded: object, csrf: str | None) -> None:
    sign_in(client, auth)
    from tests.dashboard.conftest import Seeded

    assert isinstance(seeded, Seeded)
    forms = [
        (f"/reviews/{seeded.flagged}/decide", {"action": "approve"}),
        ("/protected/remove", {"name": "Guild Person", "scope": "guild"}),
        ("/protected/add", {"name": "Someone"}),
        ("/logout", {}),
    ]
    for path, data in forms:
        sent = data if csrf is None else {**data, "csrf": csrf}
        response = client.post(path, data=sent, follow_redirects=False)
        assert response.status_code == 403, path
    assert client.get(f"/jobs/{seeded.flagged}").text.count("flagged") >= 1  # nothing was decided


def test_csrf_token_of_another_session_is_refused(client: TestClient, auth: Auth, seeded: object) -> None:
    sign_in(client, auth)
    theirs = csrf_of(client)
    client.cookies.clear()
    sign_in(client, auth)  # a new session: a new id, so a new token
    assert csrf_of(client) != theirs
    assert client.post("/logout", data={"csrf": theirs}, follow_redirects=False).status_code == 403


def test_security_headers_on_every_response(client: TestClient, auth: Auth) -> None:
    responses = [client.get("/reviews"), client.get("/nowhere"), client.get("/static/dashboard.css")]
    sign_in(client, auth)
    responses += [client.get("/reviews"), client.get("/metrics"), client.get("/jobs/nope")]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value, (response.url, name)
        assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no scripts
    assert responses[3].headers["cache-control"] == "no-store"


def test_logout_ends_the_session_in_the_browser(client: TestClient, auth: Auth) -> None:
    csrf = sign_in(client, auth)
    out = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and SESSION_COOKIE in out.headers["set-cookie"]
    assert client.get("/reviews").status_code == 401


def test_cli_refuses_a_bad_port(settings: Settings, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from bot.cli import main

    monkeypatch.setenv("IMAGINEBOT_DATA_DIR", str(settings.data_dir))
    assert main(["dashboard", "--port", "0"]) == 2
    assert "--port: 0 is outside 1..65535" in capsys.readouterr().err
    assert main(["dashboard", "--local", "--base-url", "ftp://x"]) == 2
    assert "--base-url" in capsys.readouterr().err
