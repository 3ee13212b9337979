"""The operator API over real HTTP: authentication on every route, listings and their
pages, bad input, ending and deleting, chat as server-sent events, metrics, health,
jobs, and the OpenAPI document checked against the routes. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from agents.claude_code import ToolApproval
from bots.http_auth import UnsafeBinding
from bots.http_openapi import document
from bots.http_server import OperatorServer
from bots.http_settings import HttpSettings
from conversation.delivery import MISSED
from conversation.dispatcher import RESTARTING
from conversation.job_runner import JobRunner
from conversation.job_settings import JobsSettings
from conversation.scheduler import Scheduler
from conversation.settings import AccessSettings
from memory.manager import SessionManager
from memory.types import ChatKey, Delivery, Role, StoredMessage
from tests.core import RecordingPort, make_dispatcher
from tests.operator_surface import AUTH, TOKEN, Echo, Surface, start_surface, stop_surface


@pytest.fixture
async def surface(manager: SessionManager, tmp_path: Path) -> AsyncIterator[Surface]:
    started = await start_surface(manager, tmp_path)
    yield started
    await stop_surface(started)


def routes_of(server: OperatorServer) -> set[tuple[str, str]]:
    found = set()
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if route.method in ("HEAD", "*") or path.startswith("/socket.io"):
            continue
        found.add((route.method, path))
    return found


def documented() -> set[tuple[str, str]]:
    paths = document("1")["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: "x1" if m.group() == "{chat}" else "1", path)


async def test_the_openapi_document_matches_the_routes(surface: Surface) -> None:
    assert routes_of(surface.server) == documented()
    status, served = await surface.get("/api/openapi.json")
    assert status == 200
    assert served["openapi"].startswith("3.")
    assert {(m.upper(), p) for p, ops in served["paths"].items() for m in ops} == documented()


async def test_every_route_but_healthz_refuses_a_missing_or_wrong_token(surface: Surface) -> None:
    for method, path in sorted(documented()):
        url = surface.url + concrete(path)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with surface.http.request(method, url, headers=headers) as response:
                body = await response.json()
                if path == "/healthz":
                    assert response.status == 200 and body == {"status": "ok"}
                    continue
                assert response.status == 401, (method, path, headers)
                assert "admin token" in body["error"]
                assert TOKEN not in body["error"]
                assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_without_a_token_the_api_is_closed_and_cannot_leave_loopback(
    manager: SessionManager, tmp_path: Path
) -> None:
    closed = await start_surface(manager, tmp_path, token=None)
    try:
        async with closed.http.get(closed.url + "/api/sessions", headers=AUTH) as response:
            assert response.status == 401
            assert "PALAVER_ADMIN_TOKEN" in (await response.json())["error"]
        async with closed.http.get(closed.url + "/healthz") as response:
            assert response.status == 200
    finally:
        await stop_surface(closed)
    dispatcher = make_dispatcher(manager, Echo(), access=AccessSettings(), exports=tmp_path)
    exposed = OperatorServer(HttpSettings(host="0.0.0.0", port=0), None, dispatcher, tmp_path)
    with pytest.raises(UnsafeBinding, match="PALAVER_ADMIN_TOKEN"):
        await exposed.start()


async def test_sessions_page_by_cursor_and_filter(surface: Surface) -> None:
    manager = surface.manager
    ids = []
    for n in range(7):
        key = ChatKey("telegram" if n % 2 else "discord", f"c{n}")
        session = await manager.open(key)
        await manager.add_message(
            session.id, Role.USER, f"hello {n}", author_id=f"user{n % 3}", chat=key
        )
        ids.append(session.id)
    seen: list[int] = []
    cursor = ""
    pages = 0
    while True:
        status, page = await surface.get("/api/sessions", limit="3", cursor=cursor)
        assert status == 200
        seen += [s["id"] for s in page["items"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == sorted(ids, reverse=True) and pages == 3

    status, page = await surface.get("/api/sessions", interface="telegram", stats="true")
    assert [s["interface"] for s in page["items"]] == ["telegram"] * 3
    assert page["totals"]["sessions"] == 3 and page["totals"]["messages"] == 3
    assert page["items"][0]["stats"]["summaries"] == 0
    status, page = await surface.get("/api/sessions", chat="discord:c2")
    assert [s["id"] for s in page["items"]] == [ids[2]]
    status, page = await surface.get("/api/sessions", user="telegram:user1")
    assert sorted(s["id"] for s in page["items"]) == sorted(
        ids[n] for n in range(7) if n % 3 == 1 and n % 2
    )
    status, page = await surface.get("/api/sessions", status="active,idle")
    assert len(page["items"]) == 7
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, page = await surface.get("/api/sessions", active_since=soon)
    assert page["items"] == []


async def test_bad_ids_huge_pages_and_unknown_parameters_get_a_clear_4xx(surface: Surface) -> None:
    cases = [
        ("/api/sessions/abc", {}, 400, "positive whole number"),
        ("/api/sessions/0", {}, 400, "positive whole number"),
        ("/api/sessions/99999999999999999999999", {}, 400, "positive whole number"),
        ("/api/sessions/424242", {}, 404, "does not exist"),
        ("/api/sessions/424242/messages", {}, 404, "does not exist"),
        ("/api/sessions", {"limit": "100000"}, 400, "limit must be from 1 to 500"),
        ("/api/sessions", {"limit": "-1"}, 400, "limit"),
        ("/api/sessions", {"cursor": "x'; drop"}, 400, "cursor"),
        ("/api/sessions", {"status": "sleeping"}, 400, "none of active"),
        ("/api/sessions", {"project": "nope"}, 400, "no project"),
        ("/api/sessions", {"chat": "nocolon"}, 400, "interface:chat_id"),
        ("/api/sessions", {"active_since": "yesterday"}, 400, "ISO 8601"),
        ("/api/sessions", {"colour": "blue"}, 400, "unknown parameter 'colour'"),
        ("/api/sessions/1/export", {"format": "pdf"}, 400, "json, csv or md"),
        ("/api/nowhere", {}, 404, "no route GET /api/nowhere"),
    ]
    for path, params, expected, message in cases:
        status, body = await surface.get(path, **params)
        assert status == expected, (path, params, body)
        assert message in body["error"], (path, body)


async def test_one_session_its_messages_and_summaries_and_ending_and_deleting_it(
    surface: Surface,
) -> None:
    manager = surface.manager
    key = ChatKey("telegram", "42")
    session = await manager.open(key)
    for n in range(30):
        await manager.add_message(session.id, Role.USER, f"note {n} about the order 4417")
    await manager.fold(session.id)
    status, one = await surface.get(f"/api/sessions/{session.id}")
    assert status == 200 and one["message_count"] == 30 and one["stats"]["summaries"] == 1
    texts: list[str] = []
    cursor = ""
    while True:
        status, page = await surface.get(
            f"/api/sessions/{session.id}/messages", limit="7", cursor=cursor
        )
        texts += [m["text"] for m in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert texts == [f"note {n} about the order 4417" for n in range(30)]
    status, summaries = await surface.get(f"/api/sessions/{session.id}/summaries")
    assert [(s["first_seq"], s["level"]) for s in summaries["items"]] == [(1, 1)]

    status, ended = await surface.send("POST", f"/api/sessions/{session.id}/end")
    assert status == 200 and ended["status"] == "ended"
    status, again = await surface.send("POST", f"/api/sessions/{session.id}/end")
    assert status == 409 and "ended already" in again["error"]
    assert (await manager.open(key)).id != session.id  # the chat starts afresh

    status, deleted = await surface.send("DELETE", f"/api/sessions/{session.id}")
    assert status == 200 and deleted == {"deleted": session.id, "messages": 30}
    status, gone = await surface.get(f"/api/sessions/{session.id}")
    assert status == 404 and "does not exist" in gone["error"]
    assert await manager.messages(session.id) == []
    assert await manager.summaries(session.id) == []


async def test_a_chat_over_the_api_streams_its_reply_as_server_sent_events(
    surface: Surface,
) -> None:
    events = await surface.chat("desk-1", "where is my order?", message_id="m-1")
    names = [name for name, _ in events]
    assert names[-1] == "done" and "message" in names
    final = next(data for name, data in events if name == "message")
    assert final == {"text": "echo: where is my order?", "markdown": True}
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    assert "echo: where is my order?".startswith(streamed)
    session_id = events[-1][1]["session_id"]
    status, page = await surface.get(f"/api/sessions/{session_id}/messages")
    assert status == 200
    assert [(m["role"], m["author_name"], m["text"]) for m in page["items"]] == [
        ("user", "Ada", "where is my order?"),
        ("assistant", None, "echo: where is my order?"),
    ]
    # The same message id again is answered once.
    again = await surface.chat("desk-1", "where is my order?", message_id="m-1")
    assert [name for name, _ in again] == ["done"]
    # Commands work as on every interface.
    status_events = await surface.chat("desk-1", "/status")
    assert any("Session #" in d.get("text", "") for n, d in status_events if n == "message")


async def test_a_bad_chat_request_gets_a_clear_4xx(surface: Surface) -> None:
    url = f"{surface.url}/api/chats/desk/messages"
    cases = [
        ({"text": "hi"}, "user_id"),
        ({"user_id": 5, "text": "hi"}, "user_id"),
        ({"user_id": "u", "text": "hi", "admin": True}, "admin"),
        ({"user_id": "u", "text": ""}, "text"),
    ]
    for body, message in cases:
        async with surface.http.post(url, json=body, headers=AUTH) as response:
            assert response.status == 400
            assert message in (await response.json())["error"]
    async with surface.http.post(
        f"{surface.url}/api/chats/a:b/messages", json={"user_id": "u", "text": "x"}, headers=AUTH
    ) as response:
        assert response.status == 400 and "no colons" in (await response.json())["error"]
    async with surface.http.post(url, data=b"{not json", headers=AUTH) as response:
        assert response.status == 400


async def test_metrics_after_a_turn(surface: Surface) -> None:
    await surface.chat("desk-2", "count me")
    status, raw = await surface.get("/metrics")
    assert status == 200
    text = raw.decode()
    assert 'palaver_turns_total{interface="api",outcome="replied"} 1.0' in text
    assert 'palaver_tokens_total{kind="input"} 120.0' in text
    assert 'palaver_tokens_total{kind="cache_read"} 30.0' in text
    assert "palaver_cost_usd_total 0.0021" in text
    assert 'palaver_sessions{status="active"} 1.0' in text
    assert 'palaver_turn_overhead_seconds_count{interface="api"} 1.0' in text
    assert 'palaver_model_latency_seconds_count{interface="api"} 1.0' in text
    assert "palaver_session_cache_hits_total" in text


@dataclass
class Bot:
    name: str
    connected: bool


async def test_readyz_says_what_is_not_ready(surface: Surface) -> None:
    status, body = await surface.get("/readyz")
    assert status == 200 and body == {"ready": True, "checks": {"database": "ok"}}
    telegram = Bot("telegram", connected=False)
    surface.server.watch([telegram, surface.server.api])  # type: ignore[list-item]
    status, body = await surface.get("/readyz")
    assert status == 503
    assert body["checks"] == {"database": "ok", "telegram": "not connected"}
    telegram.connected = True
    status, body = await surface.get("/readyz")
    assert status == 200


async def test_job_routes(surface: Surface) -> None:
    status, body = await surface.get("/api/jobs")
    assert status == 503 and body == {"error": "jobs are not running in this process"}
    status, body = await surface.send("POST", "/api/jobs/finalize/run")
    assert status == 503
    # The real runner, as the application wires it: it reports every recorded run.
    later = datetime.now(UTC) + timedelta(hours=3)  # the chat below has gone quiet
    runner = JobRunner(surface.manager, JobsSettings(), now=lambda: later)
    runner.observers.append(surface.server.job_finished)
    surface.server.jobs = Scheduler(runner)
    await surface.chat("desk-1", "hello")
    status, body = await surface.get("/api/jobs")
    assert [job["name"] for job in body["items"]][:2] == ["finalize", "expire"]
    assert body["items"][0]["last_run"] is None
    status, run = await surface.send("POST", "/api/jobs/finalize/run")
    assert status == 200 and run["outcome"] == "ok" and run["counts"]["finalized"] == 1
    status, body = await surface.get("/api/jobs")
    assert body["items"][0]["last_run"]["id"] == run["id"]
    status, body = await surface.send("POST", "/api/jobs/nope/run")
    assert status == 404 and "the jobs are: finalize, expire" in body["error"]
    status, raw = await surface.get("/metrics")
    assert 'palaver_job_runs_total{job="finalize",outcome="ok"} 1.0' in raw.decode()


async def test_running_a_job_that_is_unknown_or_while_the_jobs_stop(surface: Surface) -> None:
    """An unknown job is 404, the jobs shutting down 503, both JSON errors in plain
    words; the OpenAPI document lists both for the route."""
    runner = JobRunner(surface.manager, JobsSettings())
    scheduler = Scheduler(runner)
    surface.server.jobs = scheduler
    status, body = await surface.send("POST", "/api/jobs/no-such-job/run")
    assert status == 404 and body["error"].startswith("there is no job 'no-such-job'")
    status, body = await surface.send("POST", "/api/jobs/" + "x" * 500 + "/run")
    assert status == 404 and len(body["error"]) < 300
    await scheduler.stop(grace=0)
    status, body = await surface.send("POST", "/api/jobs/finalize/run")
    assert status == 503 and body == {"error": "the jobs are shutting down; nothing new starts"}
    status, doc = await surface.get("/api/openapi.json")
    responses = doc["paths"]["/api/jobs/{name}/run"]["post"]["responses"]
    assert {"200", "404", "409", "503"} <= set(responses)
    assert "no job" in responses["404"]["description"]
    assert "shutting down" in responses["503"]["description"]


async def test_stats_and_projects(surface: Surface) -> None:
    await surface.chat("desk-3", "spend a little")
    await surface.manager.create_project("atlas", model="claude-haiku-4-5")
    status, stats = await surface.get("/api/stats", days="3")
    assert status == 200
    assert stats["sessions"]["total"] == 1
    assert stats["usage"]["input_tokens"] == 120
    assert [row["interface"] for row in stats["by_interface"]] == ["api"]
    assert stats["by_day"][0]["usage"]["output_tokens"] == 8
    assert 0 <= stats["session_cache"]["hit_rate"] <= 1
    status, projects = await surface.get("/api/projects")
    assert [p["name"] for p in projects["items"]] == ["atlas"]
    status, body = await surface.get("/api/stats", days="0")
    assert status == 400 and "days" in body["error"]


async def test_a_large_body_is_refused(manager: SessionManager, tmp_path: Path) -> None:
    small = await start_surface(manager, tmp_path, max_body_bytes=2048)
    try:
        body = {"user_id": "u", "text": "x" * 5000}
        async with small.http.post(
            f"{small.url}/api/chats/d/messages", json=body, headers=AUTH
        ) as response:
            assert response.status == 413
            assert "error" in await response.json()
    finally:
        await stop_surface(small)


async def test_the_client_session_is_closed_by_stop(surface: Surface) -> None:
    assert isinstance(surface.http, aiohttp.ClientSession)
    assert TOKEN not in repr(surface.server.token)


async def failed(manager: SessionManager, since: datetime) -> list[StoredMessage]:
    return [m for m in await manager.owed(since) if m.delivery is Delivery.FAILED]


async def test_a_reply_owed_after_a_restart_is_streamed_on_the_chat_s_next_message(
    manager: SessionManager, tmp_path: Path
) -> None:
    first = await start_surface(manager, tmp_path / "1")
    await first.dispatcher.drain(1.0)  # shutting down: a message is kept for later
    events = await first.chat("desk-9", "are you there?", message_id="q-1")
    assert events[0] == ("message", {"text": RESTARTING, "markdown": False})
    await stop_surface(first)

    second = await start_surface(manager, tmp_path / "2")
    try:
        assert await second.dispatcher.resume({"api": second.server.api}) == 1
        # Answered, but no client holds the chat open: kept, marked undeliverable.
        async with asyncio.timeout(10):
            while not await failed(manager, second.dispatcher.outbox.since()):  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # a row in the database: nothing to wait on
        events = await second.chat("desk-9", "hello again")
        texts = [data["text"] for name, data in events if name == "message"]
        assert f"{MISSED}\n\necho: are you there?" in texts
        assert "echo: hello again" in texts
        assert await manager.owed(second.dispatcher.outbox.since()) == []
    finally:
        await stop_surface(second)


async def test_a_choice_offered_in_an_api_chat_is_pressed_over_http(surface: Surface) -> None:
    port = RecordingPort()
    key = ChatKey("api", "desk-7")
    approval = ToolApproval("Bash", "Running: make test", {"command": "make test"}, "atlas")
    asked = asyncio.create_task(surface.dispatcher.approvals.ask(key, port, approval))
    async with asyncio.timeout(5):
        await port.delivered.wait()
    (text, choices) = port.offers[0]
    assert "Bash" in text and [label for label, _ in choices] == ["Approve", "Deny"]
    url = f"{surface.url}/api/chats/desk-7/choices"
    body = {"user_id": "u1", "display_name": "Ada", "data": choices[0][1]}
    async with surface.http.post(url, json=body, headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == {"text": "Approved by Ada."}
    assert await asked is True
    async with surface.http.post(url, json=body, headers=AUTH) as response:
        assert (await response.json())["text"] == "This request is no longer waiting for an answer."
    async with surface.http.post(url, json={"user_id": "u1"}, headers=AUTH) as response:
        assert response.status == 400 and "data" in (await response.json())["error"]


async def test_metrics_count_sessions_in_every_state(surface: Surface) -> None:
    """The gauges are read from the database when scraped: each state the lifecycle
    moves a session to, by the jobs on their moved clock, by /reset."""
    manager = surface.manager
    start = datetime.now(UTC)
    clock = [start]
    runner = JobRunner(manager, JobsSettings(), now=lambda: clock[0])
    await surface.chat("to-expire", "hello")
    clock[0] = start + timedelta(seconds=manager.settings.expire_after_s + 60)
    assert (await runner.run_now("expire")).counts["expired"] == 1
    await surface.chat("to-finalize", "hello")
    clock[0] = datetime.now(UTC) + timedelta(seconds=manager.settings.idle_after_s + 60)
    assert (await runner.run_now("finalize")).counts["finalized"] == 1
    await surface.chat("to-idle", "hello")
    # The finalize job's first step alone (as a run cut short at shutdown leaves it).
    assert (
        len(await manager.store.sessions.mark_idle(datetime.now(UTC) + timedelta(seconds=1))) == 1
    )
    await surface.chat("active", "hello")
    await surface.chat("to-reset", "hello")
    await surface.chat("to-reset", "/reset")  # one ended, a fresh one active
    status, raw = await surface.get("/metrics")
    assert status == 200
    found = dict(re.findall(r'^palaver_sessions\{status="(\w+)"\} (\S+)$', raw.decode(), re.M))
    assert found == {
        "active": "2.0",
        "idle": "1.0",
        "finalized": "1.0",
        "expired": "1.0",
        "ended": "1.0",
    }
    active = await manager.find_by_chat(ChatKey("api", "active"))
    assert active is not None
    await manager.delete_session(active.id)
    status, raw = await surface.get("/metrics")
    assert 'palaver_sessions{status="active"} 1.0' in raw.decode()
