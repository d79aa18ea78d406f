"""The pages, scoped to the session's server: another server's things read exactly like missing ones."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from bot.config import Settings
from bot.dashboard.auth import Auth
from bot.jobs import JobState
from bot.storage import Storage
from tests.dashboard.conftest import MOD, OTHER, OTHER_MOD, Seeded, sign_in


async def _state(settings: Settings, job_id: str) -> tuple[JobState, str | None]:
    async with await Storage.open(settings.db_path) as storage:
        review = await storage.review(job_id)
        return (await storage.get_job(job_id)).state, review.decided_by if review else None


def test_another_servers_things_are_404_like_missing_ones(
    client: TestClient, auth: Auth, seeded: Seeded, settings: Settings
) -> None:
    csrf = sign_in(client, auth)
    missing = client.get("/jobs/no-such-job")
    assert missing.status_code == 404
    theirs = [
        client.get(f"/jobs/{seeded.other_flagged}"),
        client.get(f"/jobs/{seeded.other_done}"),
        client.get(f"/reviews/{seeded.other_flagged}"),
        client.get(f"/reviews/{seeded.other_flagged}?reveal=1"),
        client.get(f"/images/{seeded.other_done}/0/full"),
        client.get(f"/images/{seeded.other_flagged}/0/preview"),
        client.get(f"/images/{seeded.other_flagged}/0/full"),
        client.post(f"/reviews/{seeded.other_flagged}/decide", data={"action": "approve", "csrf": csrf}),
        client.get("/reviews/no-such-job"),
        client.get("/images/no-such-job/0/full"),
        client.get(f"/images/{seeded.done}/9/full"),
        client.get(f"/images/{seeded.done}/0/other"),
    ]
    for response in theirs:
        assert response.status_code == 404, response.url
        assert response.text == missing.text, response.url
    assert asyncio.run(_state(settings, seeded.other_flagged)) == (JobState.FLAGGED, None)


def test_lists_show_only_this_servers_data(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    sign_in(client, auth)
    secrets = ("secret other prompt", "other server cat", seeded.other_flagged, seeded.other_done, "600", "601",
               "other-admin-7", "secretkey", "Other Secret Person")  # fmt: skip
    pages = {path: client.get(path) for path in ("/reviews", "/jobs", "/jobs?q=other", "/jobs?user=600",
                                                 f"/jobs?q={seeded.other_done}", "/gallery?days=365", "/audit",
                                                 "/audit.csv", "/protected", "/metrics?days=30")}  # fmt: skip
    for path, response in pages.items():
        assert response.status_code == 200, path
        for secret in secrets:
            if secret not in path:  # a search box shows what was searched for
                assert secret not in response.text, (path, secret)
    assert seeded.flagged in pages["/reviews"].text and "a lighthouse at dusk" in pages["/reviews"].text
    for searched in ("/jobs?q=other", "/jobs?user=600", f"/jobs?q={seeded.other_done}"):
        assert "No jobs match" in pages[searched].text
    assert all(j in pages["/jobs"].text for j in (seeded.flagged, seeded.done, seeded.queued))
    assert "a red fox in snow" in pages["/gallery?days=365"].text and "3 votes" in pages["/gallery?days=365"].text
    assert "cooldown_seconds" in pages["/audit.csv"].text
    assert "Guild Person" in pages["/protected"].text and "Global Person" in pages["/protected"].text


def test_the_other_moderator_sees_only_theirs(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    sign_in(client, auth, user=OTHER_MOD, guild=OTHER)
    assert seeded.other_flagged in client.get("/reviews").text
    assert seeded.flagged not in client.get("/reviews").text
    assert client.get(f"/jobs/{seeded.flagged}").status_code == 404
    assert client.get(f"/images/{seeded.done}/0/full").status_code == 404


def test_review_queue_blurs_and_reveals(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    sign_in(client, auth)
    queue = client.get("/reviews").text
    assert f"/images/{seeded.flagged}/0/preview" in queue and f"/images/{seeded.flagged}/0/full" not in queue
    assert f"/images/{seeded.flagged}/1/full" in queue  # the allowed image of the job has no blurred copy
    revealed = client.get(f"/reviews/{seeded.flagged}?reveal=1").text
    assert f"/images/{seeded.flagged}/0/full" in revealed
    preview = client.get(f"/images/{seeded.flagged}/0/preview")
    full = client.get(f"/images/{seeded.flagged}/0/full")
    assert preview.status_code == full.status_code == 200
    assert preview.headers["content-type"] == "image/png" and preview.content != full.content
    assert "no-store" in full.headers["cache-control"]


@pytest.mark.parametrize(("action", "state"), [("approve", JobState.APPROVED), ("reject", JobState.REJECTED),
                                               ("strike", JobState.REJECTED), ("ban", JobState.REJECTED)])  # fmt: skip
def test_decide(client: TestClient, auth: Auth, seeded: Seeded, settings: Settings, action: str,
                state: JobState) -> None:  # fmt: skip
    csrf = sign_in(client, auth)
    done = client.post(f"/reviews/{seeded.flagged}/decide", data={"action": action, "csrf": csrf},
                       follow_redirects=False)  # fmt: skip
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{seeded.flagged}?decided={action}"
    page = client.get(done.headers["location"]).text
    assert f'id="job-state">{state.value}<' in page
    assert asyncio.run(_state(settings, seeded.flagged)) == (state, MOD)
    audit = client.get("/audit").text
    assert f"review_{action}" in audit
    if action == "ban":
        assert ">ban<" in audit
    if action == "strike":
        assert ">strike<" in audit
    assert seeded.flagged not in client.get("/reviews").text


def test_second_decision_says_who_decided_first(client: TestClient, auth: Auth, seeded: Seeded,
                                                settings: Settings) -> None:  # fmt: skip
    csrf = sign_in(client, auth)
    client.post(f"/reviews/{seeded.flagged}/decide", data={"action": "reject", "csrf": csrf})
    client.cookies.clear()
    csrf = sign_in(client, auth, user="902")
    again = client.post(f"/reviews/{seeded.flagged}/decide", data={"action": "approve", "csrf": csrf})
    assert again.status_code == 409 and f"Already decided: reject by {MOD}" in again.text
    assert asyncio.run(_state(settings, seeded.flagged)) == (JobState.REJECTED, MOD)


def test_unknown_action_is_refused(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    csrf = sign_in(client, auth)
    assert client.post(f"/reviews/{seeded.flagged}/decide", data={"action": "nuke", "csrf": csrf}).status_code == 400


def test_job_search_filters_and_pages(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    sign_in(client, auth)
    fox = client.get("/jobs", params={"q": "FOX"}).text
    assert seeded.done in fox and seeded.flagged not in fox
    assert seeded.queued in client.get("/jobs", params={"state": "queued"}).text
    assert seeded.done not in client.get("/jobs", params={"state": "queued"}).text
    by_user = client.get("/jobs", params={"user": "500"}).text
    assert seeded.flagged in by_user and seeded.done not in by_user
    assert "No jobs match" in client.get("/jobs", params={"q": "%"}).text  # LIKE wildcards are literal
    assert seeded.done in client.get("/jobs", params={"q": seeded.done}).text
    assert "page 1 of 1" in client.get("/jobs", params={"page": "7x"}).text


def test_protected_people_remove_is_scoped(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    csrf = sign_in(client, auth)
    page = client.get("/protected").text
    assert "operator&#39;s list" in page or "operator's list" in page  # a moderator cannot remove global people
    refused = client.post("/protected/remove", data={"name": "Global Person", "scope": "global", "csrf": csrf})
    assert refused.status_code == 404
    assert client.post("/protected/remove", data={"name": "Other Secret Person", "scope": "guild",
                                                  "csrf": csrf}).status_code == 404  # fmt: skip
    gone = client.post("/protected/remove", data={"name": "Guild Person", "scope": "guild", "csrf": csrf})
    assert gone.status_code == 200 and "Guild Person" not in gone.text and "Global Person" in gone.text
    assert "protect_remove" in client.get("/audit").text


def test_protected_add_rejects_non_images(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    csrf = sign_in(client, auth)
    response = client.post("/protected/add", data={"name": "X", "csrf": csrf},
                           files={"photo": ("x.png", b"not an image", "image/png")})  # fmt: skip
    assert response.status_code == 400 and "not an image" in response.text


def test_metrics_draws_charts(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    sign_in(client, auth)
    page = client.get("/metrics").text
    assert page.count("<svg") == 4 and "suggestive content" in page
    assert '<span class="big">1</span> queued' in page and '<span class="big">1</span> awaiting review' in page
    assert "style=" not in page and "<script" not in page  # the CSP allows neither


def test_audit_csv_download(client: TestClient, auth: Auth, seeded: Seeded) -> None:
    sign_in(client, auth)
    response = client.get("/audit.csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.text.splitlines()[0] == "time_utc,action,actor_id,target,detail"
    rows = response.text.splitlines()[1:]  # this session's login, then the seeded setting change
    assert [row.split(",")[1] for row in rows] == ["dashboard_login", "setting_changed"]
