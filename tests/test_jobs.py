"""The scheduled jobs: run by hand and on time, recorded, once across instances, never
fatal, cancelled cleanly at shutdown. SQLite and PostgreSQL.

The jobs' clock is a ``Clock`` the test moves; the Claude summarizer is the real one,
through the anthropic SDK, against the fake Messages API, whose answers a ``Gate``
can hold (a summary that takes long) so that a job is caught mid-run.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import pytest
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import update
from sqlalchemy.engine import make_url

from agents.claude_summarizer import ClaudeSummarizer
from agents.settings import ClaudeSettings
from conversation.job_runner import JobRunner, JobsStopped
from conversation.job_settings import JobsSettings
from conversation.jobs import JobRun, Prunable, UnknownJob
from conversation.scheduler import Scheduler
from memory.manager import SessionManager
from memory.store.jobs import job_leases
from memory.types import ChatKey, Role, SessionStatus, Usage
from tests.conftest import ManagerFactory
from tests.fakes.anthropic_api import FakeAnthropic
from tests.test_lifecycle import Clock, talk

KEY = ChatKey("telegram", "42")
CORE = ["finalize", "expire", "cleanup", "upgrade_summaries", "upkeep", "prune"]
REPO = Path(__file__).resolve().parent.parent


class Gate:
    """The fake Messages API's answer: a summary naming the last words it was sent;
    held back while ``hold`` is set, until ``release``."""

    def __init__(self) -> None:
        self.hold = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, body: dict[str, Any]) -> str:
        self.entered.set()
        if self.hold:
            await self.release.wait()
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        return "Summary: " + " ".join(text.split()[-4:])


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def claude(gate: Gate) -> AsyncIterator[ClaudeSummarizer]:
    """The Claude summarizer against the fake Messages API (no SDK retries)."""
    async with FakeAnthropic(responder=gate) as fake:
        client = anthropic.AsyncAnthropic(api_key="test-key", base_url=fake.url, max_retries=0)
        summarizer = ClaudeSummarizer(client, ClaudeSettings(breaker_failures=100))
        summarizer.fake = fake  # type: ignore[attr-defined]
        yield summarizer
        gate.release.set()
        await client.close()


def runner_for(
    manager: SessionManager,
    clock: Callable[[], datetime],
    instance: str = "a",
    *,
    prunables: dict[str, Prunable] | None = None,
    renew_every_s: float | None = None,
    **settings: Any,
) -> JobRunner:
    return JobRunner(
        manager,
        JobsSettings(instance=instance, **settings),
        prunables=prunables,
        now=clock,
        renew_every_s=renew_every_s,
    )


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait (bounded) until ``check`` holds: for things another task does."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


def size(path: Path) -> int:
    return path.stat().st_size


async def quiet_session(manager: SessionManager, clock: Clock, key: ChatKey = KEY) -> int:
    """A session with two messages, and the clock moved past idle_after."""
    session = await manager.open(key)
    await talk(manager, session.id, ["the code word is heron", "noted, heron"])
    clock.advance(manager.settings.idle_after_s + 60)
    return session.id


class Buckets:
    """Per-user state as the rate limiter keeps it; ``broken`` makes prune() fail."""

    def __init__(self, users: int, *, broken: bool = False) -> None:
        self.entries = {f"telegram:{n}": n for n in range(users)}
        self.broken = broken

    def prune(self) -> int:
        if self.broken:
            raise RuntimeError("bucket table is corrupt")
        count = len(self.entries)
        self.entries.clear()
        return count


# -- running by hand, recording, listing ---------------------------------------------------


async def test_run_now_records_the_run_and_list_jobs_shows_it(manager: SessionManager) -> None:
    clock = Clock()
    sid = await quiet_session(manager, clock)
    runner = runner_for(manager, clock)

    run = await runner.run_now("finalize")
    assert (run.job, run.instance, run.outcome, run.error) == ("finalize", "a", "ok", None)
    assert run.counts == {"idle": 1, "finalized": 1}
    assert (run.started_at, run.finished_at) == (clock(), clock())
    assert await manager.job_run(run.id) == run
    assert (await manager.get(sid)).status is SessionStatus.FINALIZED

    statuses = {s.name: s for s in await runner.list_jobs()}
    assert list(statuses) == CORE
    finalize = statuses["finalize"]
    assert (finalize.enabled, finalize.schedule, finalize.last_run) == (True, "every 1 min", run)
    assert finalize.next_run == run.started_at + timedelta(seconds=60)
    assert (finalize.running_on, finalize.lease_until) == (None, None)
    upkeep = statuses["upkeep"]
    assert (upkeep.schedule, upkeep.last_run) == ("cron 17 4 * * * (UTC)", None)
    assert upkeep.next_run is not None and upkeep.next_run > clock()
    assert (upkeep.next_run.hour, upkeep.next_run.minute) == (4, 17)
    assert statuses["cleanup"].next_run is None  # never ran, and no scheduler to ask


async def test_run_now_of_an_unknown_job_lists_the_jobs(manager: SessionManager) -> None:
    runner = runner_for(manager, Clock())
    with pytest.raises(UnknownJob) as raised:
        await runner.run_now("vacuum")
    assert str(raised.value) == (
        "there is no job 'vacuum'; the jobs are: "
        "finalize, expire, cleanup, upgrade_summaries, upkeep, prune"
    )
    assert (await runner.run_now("Upgrade-Summaries")).job == "upgrade_summaries"


async def test_a_failing_job_is_recorded_and_the_next_job_still_runs(
    manager: SessionManager,
) -> None:
    clock = Clock()
    buckets, notices = Buckets(3, broken=True), Buckets(2)
    runner = runner_for(manager, clock, prunables={"rate_limit": buckets, "notices": notices})

    failed = await runner.run_now("prune")
    assert failed.outcome == "failed"
    assert failed.error == "pruning failed for rate_limit (RuntimeError: bucket table is corrupt)"
    # What it did before and after the failure is counted all the same.
    assert failed.counts == {"spend_cache": 0, "notices": 2}
    assert notices.entries == {}
    assert await manager.job_run(failed.id) == failed

    sid = await quiet_session(manager, clock)
    assert (await runner.run_now("finalize")).outcome == "ok"
    assert (await manager.get(sid)).status is SessionStatus.FINALIZED

    # Tried again next time: once the state is sound, it prunes.
    buckets.broken = False
    clock.advance(600)
    again = await runner.run_now("prune")
    assert again.outcome == "ok"
    assert again.counts == {"spend_cache": 0, "rate_limit": 3, "notices": 0}
    assert [r.outcome for r in await manager.job_history("prune")] == ["ok", "failed"]


# -- once across instances -----------------------------------------------------------------


async def test_two_instances_one_run(
    make_manager: ManagerFactory, claude: ClaudeSummarizer, gate: Gate
) -> None:
    clock = Clock()
    first = await make_manager(summarizer=claude)
    second = await make_manager()
    await quiet_session(first, clock)
    a, b = runner_for(first, clock, "a"), runner_for(second, clock, "b")

    gate.hold = True
    running = asyncio.create_task(a.run_now("finalize"))
    await asyncio.wait_for(gate.entered.wait(), 10)
    assert a.running == ["finalize"]
    # While a runs it: b's scheduled run does nothing and leaves no record; b's run
    # by hand is recorded as skipped, naming the holder.
    assert await b.run_scheduled("finalize") is None
    skipped = await b.run_now("finalize")
    assert (skipped.instance, skipped.outcome, skipped.counts) == ("b", "skipped", {})
    assert skipped.error is not None and skipped.error.startswith("finalize is running on a ")
    listed = {s.name: s for s in await b.list_jobs()}["finalize"]
    assert (listed.running_on, listed.last_run) == ("a", skipped)
    assert listed.lease_until == clock() + timedelta(seconds=120)

    gate.release.set()
    done = await asyncio.wait_for(running, 10)
    assert (done.instance, done.outcome, done.counts) == ("a", "ok", {"idle": 1, "finalized": 1})
    history = await second.job_history("finalize")
    assert [(r.instance, r.outcome) for r in history] == [("b", "skipped"), ("a", "ok")]
    assert {s.name: s for s in await b.list_jobs()}["finalize"].running_on is None


async def test_scheduled_runs_of_two_instances_at_once_run_the_job_once(
    make_manager: ManagerFactory,
) -> None:
    clock = Clock()
    first, second = await make_manager(), await make_manager()
    runners = [runner_for(first, clock, "a"), runner_for(second, clock, "b")]
    for _round in range(3):
        results = await asyncio.gather(*(r.run_scheduled("cleanup") for r in runners))
        assert len([r for r in results if r is not None]) == 1
        clock.advance(3600)
    assert len(await first.job_history("cleanup")) == 3


async def test_a_scheduled_run_skips_a_job_another_instance_just_did(
    make_manager: ManagerFactory,
) -> None:
    clock = Clock()
    first, second = await make_manager(), await make_manager()
    a, b = runner_for(first, clock, "a"), runner_for(second, clock, "b")
    assert await a.run_scheduled("expire") is not None
    # Every 300 s: within half of that, b's timer (out of step with a's) does nothing...
    clock.advance(149)
    assert await b.run_scheduled("expire") is None
    # ...after it, b runs it; and by hand, it runs whenever asked.
    clock.advance(2)
    assert await b.run_scheduled("expire") is not None
    assert (await a.run_now("expire")).outcome == "ok"
    outcomes = [(r.instance, r.outcome) for r in await first.job_history("expire")]
    assert outcomes == [("a", "ok"), ("b", "ok"), ("a", "ok")]


async def test_a_crashed_holders_lease_runs_out_and_another_instance_takes_over(
    make_manager: ManagerFactory,
) -> None:
    clock = Clock()
    first, second = await make_manager(), await make_manager()
    # What a process that crashed mid-run leaves behind: its lease and a running run.
    until = clock() + timedelta(seconds=120)
    assert await first.take_job_lease("cleanup", "crashed", now=clock(), until=until)
    orphan = await first.start_job_run("cleanup", "crashed", now=clock())
    b = runner_for(second, clock, "b")

    clock.advance(119)
    assert await b.run_scheduled("cleanup") is None
    assert (await b.run_now("cleanup")).outcome == "skipped"
    clock.advance(2)  # the lease has run out
    taken = await b.run_scheduled("cleanup")
    assert taken is not None and (taken.instance, taken.outcome) == ("b", "ok")
    left = await second.job_run(orphan)
    assert left is not None and (left.outcome, left.finished_at) == ("failed", clock())
    assert left.error == "its instance stopped before it finished (the lease ran out)"


async def test_a_long_job_renews_its_lease(
    make_manager: ManagerFactory, claude: ClaudeSummarizer, gate: Gate
) -> None:
    clock = Clock()
    first, second = await make_manager(summarizer=claude), await make_manager()
    await quiet_session(first, clock)
    a = runner_for(first, clock, "a", lease_s=60, renew_every_s=0.01)
    b = runner_for(second, clock, "b", lease_s=60)
    gate.hold = True
    running = asyncio.create_task(a.run_now("finalize"))
    await asyncio.wait_for(gate.entered.wait(), 10)
    taken_at = clock()
    clock.advance(50)

    async def renewed() -> bool:
        lease = (await second.job_leases())["finalize"]
        return lease.expires_at >= taken_at + timedelta(seconds=110)

    await eventually(renewed)
    clock.advance(20)  # past the lease as first taken: renewed, it still holds
    assert await b.run_scheduled("finalize") is None
    gate.release.set()
    assert (await asyncio.wait_for(running, 10)).outcome == "ok"


async def test_a_job_that_lost_its_lease_stops(
    make_manager: ManagerFactory, claude: ClaudeSummarizer, gate: Gate
) -> None:
    clock = Clock()
    first = await make_manager(summarizer=claude)
    await quiet_session(first, clock)
    a = runner_for(first, clock, "a", renew_every_s=0.01)
    gate.hold = True
    running = asyncio.create_task(a.run_now("finalize"))
    await asyncio.wait_for(gate.entered.wait(), 10)
    # Another instance took the lease (this one stalled past its expiry).
    async with first.store.db.writer.begin() as conn:
        await conn.execute(
            update(job_leases).where(job_leases.c.job == "finalize").values(holder="b")
        )
    run = await asyncio.wait_for(running, 10)
    assert (run.outcome, run.error) == ("failed", "another instance took its lease; stopped here")
    assert run.counts == {"idle": 1}
    assert await first.job_run(run.id) == run


# -- shutdown --------------------------------------------------------------------------------


async def test_stop_cancels_a_job_after_the_grace_and_records_it(
    manager: SessionManager, make_manager: ManagerFactory, claude: ClaudeSummarizer, gate: Gate
) -> None:
    clock = Clock()
    summarizing = await make_manager(summarizer=claude)
    sid = await quiet_session(summarizing, clock)
    runner = runner_for(summarizing, clock)
    scheduler = Scheduler(runner)
    await scheduler.start()
    gate.hold = True
    running = asyncio.create_task(scheduler.run_now("finalize"))
    await asyncio.wait_for(gate.entered.wait(), 10)

    await asyncio.wait_for(scheduler.stop(grace=0.1), 20)
    run = await running
    assert (run.outcome, run.error) == ("cancelled", "cancelled at shutdown after 0.1 s")
    assert run.counts == {"idle": 1}  # as far as it got
    assert await manager.job_run(run.id) == run
    lease = (await manager.job_leases())["finalize"]
    assert lease.expires_at == lease.finished_at == clock()  # let go at once
    with pytest.raises(JobsStopped):
        await runner.run_now("finalize")
    # Nothing half-done: the session is idle, and the next run finalizes it.
    assert (await manager.get(sid)).status is SessionStatus.IDLE
    gate.hold = False
    after = await runner_for(summarizing, clock, "next").run_now("finalize")
    assert after.counts == {"idle": 0, "finalized": 1}


async def test_stop_lets_a_job_finish_within_the_grace(
    make_manager: ManagerFactory, claude: ClaudeSummarizer, gate: Gate
) -> None:
    clock = Clock()
    manager = await make_manager(summarizer=claude)
    await quiet_session(manager, clock)
    scheduler = Scheduler(runner_for(manager, clock))
    await scheduler.start()
    gate.hold = True
    running = asyncio.create_task(scheduler.run_now("finalize"))
    await asyncio.wait_for(gate.entered.wait(), 10)
    stopping = asyncio.create_task(scheduler.stop(grace=60))
    await asyncio.sleep(0)
    assert not stopping.done()
    gate.release.set()
    await asyncio.wait_for(stopping, 20)
    run = await running
    assert (run.outcome, run.counts) == ("ok", {"idle": 1, "finalized": 1})


async def test_a_run_cancelled_while_taking_its_lease_lets_the_lease_go(
    manager: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel arrives after the database took the lease, before the runner heard
    of it: without letting it go, the job would wait out lease_s everywhere."""
    clock = Clock()
    taken = asyncio.Event()
    take = manager.take_job_lease

    async def take_then_wait(*args: Any, **kwargs: Any) -> bool:
        result = await take(*args, **kwargs)  # committed
        taken.set()
        await asyncio.Event().wait()  # the cancel lands here
        return result

    monkeypatch.setattr(manager, "take_job_lease", take_then_wait)
    running = asyncio.create_task(runner_for(manager, clock).run_now("finalize"))
    await asyncio.wait_for(taken.wait(), 10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    lease = (await manager.job_leases())["finalize"]
    assert lease.expires_at <= clock(), "the lease must be let go at once"
    monkeypatch.undo()
    other = await runner_for(manager, clock, "b").run_now("finalize")
    assert other.outcome == "ok"


async def test_stop_while_a_run_is_being_recorded_starts_no_job_and_lets_its_lease_go(
    make_manager: ManagerFactory,
    claude: ClaudeSummarizer,
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() sees no job body yet, so the run must not start one after it: that job
    would run on past the shutdown, its lease held."""
    clock = Clock()
    manager = await make_manager(summarizer=claude)
    await quiet_session(manager, clock)
    runner = runner_for(manager, clock)
    recorded, go_on = asyncio.Event(), asyncio.Event()
    start = manager.start_job_run

    async def start_then_wait(*args: Any, **kwargs: Any) -> int:
        run_id = await start(*args, **kwargs)
        recorded.set()
        await go_on.wait()
        return run_id

    monkeypatch.setattr(manager, "start_job_run", start_then_wait)
    gate.hold = True  # a job body that began would hang in its closing summary
    running = asyncio.create_task(runner.run_now("finalize"))
    await asyncio.wait_for(recorded.wait(), 10)
    stopping = asyncio.create_task(runner.stop(grace=0))
    await asyncio.sleep(0)  # stop() has begun: nothing new may start
    go_on.set()
    await asyncio.wait_for(stopping, 30)
    assert runner.running == []
    with pytest.raises(JobsStopped):
        await running
    assert not gate.entered.is_set()
    run = (await manager.last_job_runs(["finalize"]))["finalize"]
    assert (run.outcome, run.error) == ("cancelled", "cancelled at shutdown before it began")
    lease = (await manager.job_leases())["finalize"]
    assert lease.expires_at <= clock()


# -- the scheduler ---------------------------------------------------------------------------


async def test_the_scheduler_registers_the_configured_jobs_and_starts_and_stops(
    manager: SessionManager,
) -> None:
    settings = JobsSettings(
        instance="a",
        timezone="Europe/Berlin",
        cleanup={"cron": "*/15 * * * *"},
        prune={"enabled": False},
        finalize={"every": 45},
    )
    scheduler = Scheduler(JobRunner(manager, settings))
    await scheduler.start()
    aps = scheduler.apscheduler
    assert aps is not None and aps.running
    jobs = {job.id: job for job in aps.get_jobs()}
    assert sorted(jobs) == sorted(["finalize", "expire", "cleanup", "upgrade_summaries", "upkeep"])
    for job in jobs.values():
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, None)
    intervals = {
        name: jobs[name].trigger.interval for name in ("finalize", "expire", "upgrade_summaries")
    }
    assert all(isinstance(jobs[name].trigger, IntervalTrigger) for name in intervals)
    assert intervals == {
        "finalize": timedelta(seconds=45),
        "expire": timedelta(seconds=300),
        "upgrade_summaries": timedelta(seconds=600),
    }
    for name, cron in (("cleanup", "*/15 * * * *"), ("upkeep", "17 4 * * *")):
        trigger = jobs[name].trigger
        assert isinstance(trigger, CronTrigger)
        expected = CronTrigger.from_crontab(cron, timezone=settings.tz)
        assert str(trigger) == str(expected) and str(trigger.timezone) == "Europe/Berlin"
    now = datetime.now(UTC)
    # Never ran: the interval jobs are due after a short settling delay; a cron job
    # that never ran waits for its time.
    assert now < jobs["finalize"].next_run_time <= now + timedelta(seconds=30)
    upkeep = jobs["upkeep"].next_run_time.astimezone(settings.tz)
    assert (upkeep.hour, upkeep.minute) == (4, 17) and upkeep > now
    listed = {s.name: s for s in await scheduler.list_jobs()}
    assert listed["finalize"].next_run == jobs["finalize"].next_run_time
    assert (listed["prune"].enabled, listed["prune"].next_run) == (False, None)
    await asyncio.wait_for(scheduler.stop(grace=1), 10)
    assert scheduler.apscheduler is None and aps.state == STATE_STOPPED


async def test_the_scheduler_runs_jobs_on_time_and_one_failing_stops_nothing(
    manager: SessionManager,
) -> None:
    clock = Clock()
    sid = await quiet_session(manager, clock)
    runner = JobRunner(
        manager,
        JobsSettings(instance="a"),
        prunables={"rate_limit": Buckets(2, broken=True)},
        now=clock,
    )
    scheduler = Scheduler(runner)
    await scheduler.start()
    aps = scheduler.apscheduler
    assert aps is not None
    due = datetime.now(UTC)
    for name in ("prune", "finalize"):
        aps.modify_job(name, next_run_time=due)  # due now, instead of in 30 s

    async def both_ran() -> bool:
        last = await runner.last_runs()
        return len(last) == 2 and all(r.finished_at is not None for r in last.values())

    await eventually(both_ran)
    last = await runner.last_runs()
    assert (last["prune"].outcome, last["finalize"].outcome) == ("failed", "ok")
    assert (await manager.get(sid)).status is SessionStatus.FINALIZED
    # Both are scheduled again, a period on, and the scheduler runs on.
    assert aps.running
    assert aps.get_job("prune").next_run_time >= due + timedelta(seconds=600)
    assert aps.get_job("finalize").next_run_time >= due + timedelta(seconds=60)
    await scheduler.stop(grace=1)


async def test_jobs_turned_off_are_not_scheduled_but_run_by_hand(
    manager: SessionManager,
) -> None:
    runner = JobRunner(manager, JobsSettings(instance="a", enabled=False))
    scheduler = Scheduler(runner)
    await scheduler.start()
    assert scheduler.apscheduler is not None and scheduler.apscheduler.get_jobs() == []
    assert all(not s.enabled and s.next_run is None for s in await scheduler.list_jobs())
    assert (await scheduler.run_now("expire")).outcome == "ok"
    await scheduler.stop(grace=1)


# -- the other jobs ---------------------------------------------------------------------------


async def test_upgrade_summaries_rewrites_fallbacks_once_claude_answers(
    make_manager: ManagerFactory, claude: ClaudeSummarizer
) -> None:
    fake: FakeAnthropic = claude.fake  # type: ignore[attr-defined]
    manager = await make_manager(summarizer=claude)
    sids = []
    for n in range(3):
        sid = (await manager.open(ChatKey("telegram", str(n)))).id
        await talk(manager, sid, [f"chat {n} says fact {i}" for i in range(12)])
        fake.fail_next(529)  # overloaded: the fold falls back to the extractive summarizer
        assert await manager.fold(sid) is not None
        sids.append(sid)
    for sid in sids:
        assert [s.fallback for s in await manager.summaries(sid)] == [True]

    run = await runner_for(manager, Clock(), upgrade_summaries={"batch": 2}).run_now(
        "upgrade_summaries"
    )
    assert (run.outcome, run.counts) == ("ok", {"sessions": 3, "upgraded": 3, "unavailable": 0})
    for n, sid in enumerate(sids):
        (summary,) = await manager.summaries(sid)
        assert (summary.fallback, summary.summarizer) == (False, "claude:claude-haiku-4-5")
        assert summary.text == f"Summary: {n} says fact 7"  # the last of the 8 folded
        context = await manager.build_context(sid)
        assert context.summaries[0].startswith("Summary:")


async def test_upkeep_keeps_the_database_tidy(manager: SessionManager) -> None:
    clock = Clock()
    session = await manager.open(KEY)
    await talk(manager, session.id, [f"line {i}" for i in range(200)])
    db = manager.store.db
    wal = Path(f"{make_url(db.url).database}-wal")
    grown = size(wal) if db.is_sqlite else 0
    run = await runner_for(manager, clock).run_now("upkeep")
    assert run.outcome == "ok"
    if db.is_sqlite:
        assert run.counts["optimized"] == 1 and run.counts["truncated"] == 1
        # The WAL was folded in and truncated: what is left is the run's own record.
        assert size(wal) < min(grown, 10 * 4096)
        async with db.writer.connect() as conn:
            limit = (await conn.exec_driver_sql("PRAGMA journal_size_limit")).scalar()
        assert limit == 64 * 1024 * 1024
    else:
        assert run.counts == {"analyzed": 6}
    assert len(await manager.messages(session.id)) == 200


async def test_cleanup_also_forgets_old_job_runs(manager: SessionManager) -> None:
    clock = Clock()
    runner = runner_for(manager, clock)
    old = await runner.run_now("prune")
    clock.advance(runner.settings.keep_runs_s - 60)
    kept = await runner.run_now("expire")
    clock.advance(120)
    run = await runner.run_now("cleanup")
    assert run.counts["job_runs"] == 1
    assert await manager.job_run(old.id) is None
    assert await manager.job_run(kept.id) == kept


async def test_cleanup_deletes_claude_code_sessions_no_project_resumes(
    manager: SessionManager,
) -> None:
    """A reset or replaced Claude Code session goes with its transcript once it is
    unused past retention; the project's current one stays, however old."""
    clock = Clock()
    runner = runner_for(manager, clock)
    project = await manager.create_project("atlas")
    line: Any = {"type": "user", "uuid": "u1", "message": {"role": "user", "content": "hi"}}
    for code_session in ("s-old", "s-now"):
        await manager.record_code_turn(
            project.id,
            code_session,
            chat=KEY,
            usage=Usage(1, 1),
            num_turns=1,
            context_tokens=0,
            lost=None,
        )
        key: Any = {"project_key": "-srv-atlas", "session_id": code_session}
        await manager.transcripts.append(key, [line])

    fresh = await runner.run_now("cleanup")
    assert (fresh.counts["code_sessions"], fresh.counts["transcript_lines"]) == (0, 0)
    clock.advance(manager.settings.retain_for_s + 60)
    run = await runner.run_now("cleanup")
    assert (run.counts["code_sessions"], run.counts["transcript_lines"]) == (1, 1)
    assert [s.session_id for s in await manager.code_history(project.id)] == ["s-now"]
    assert await manager.transcripts.entries("s-old") == []
    assert len(await manager.transcripts.entries("s-now")) == 1


# -- settings --------------------------------------------------------------------------------


def test_config_toml_jobs_block_holds_the_defaults() -> None:
    data = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    assert JobsSettings.model_validate(data["jobs"]) == JobsSettings()


@pytest.mark.parametrize(
    ("section", "value", "key", "message"),
    [
        ({"finalize": {"every": 0}}, 0, ("finalize", "every"), "greater than or equal to 1"),
        ({"expire": {"every": "5m"}}, "5m", ("expire", "every"), "valid integer"),
        (
            {"cleanup": {"cron": "61 * * * *"}},
            "61 * * * *",
            ("cleanup", "cron"),
            'cron expression of 5 fields, "minute hour day month day-of-week"',
        ),
        ({"upkeep": {"cron": "17 4 * *"}}, "17 4 * *", ("upkeep", "cron"), "got 4 field(s)"),
        ({"upkeep": {"cron": "17 4 * * 0"}}, "17 4 * * 0", ("upkeep", "cron"), "names"),
        ({"upkeep": {"cron": "0 0 31 2 *"}}, "0 0 31 2 *", ("upkeep", "cron"), "never fires"),
        ({"timezone": "Mars/Olympus"}, "Mars/Olympus", ("timezone",), "IANA time zone"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_key_and_value(
    section: dict[str, Any], value: Any, key: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        JobsSettings.model_validate(section)
    (error,) = raised.value.errors()  # type: ignore[attr-defined]
    assert (error["loc"], error["input"]) == (key, value)
    assert message in error["msg"]


def test_a_schedule_replaces_the_default_and_both_at_once_are_refused() -> None:
    settings = JobsSettings.model_validate(
        {"upkeep": {"every": 7200}, "prune": {"cron": "0 * * * *"}}
    )
    assert (settings.upkeep.every, settings.upkeep.cron) == (7200, None)
    assert (settings.prune.every, settings.prune.cron) == (None, "0 * * * *")
    assert settings.model_dump()["upkeep"] == {
        "enabled": True,
        "every": 7200,
        "journal_size_limit": 64 * 1024 * 1024,
    }
    with pytest.raises(ValueError, match=r"every = 60 and cron = '0 \* \* \* \*' are both set"):
        JobsSettings.model_validate({"finalize": {"every": 60, "cron": "0 * * * *"}})


def test_first_run_follows_the_last_run_of_any_instance() -> None:
    from conversation.scheduler import first_run

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    settings = JobsSettings()

    def ran(at: datetime) -> JobRun:
        return JobRun(1, "x", "other", at, at, "ok", {}, None)

    hourly = settings.cleanup
    assert first_run(hourly, None, now, UTC) == now + timedelta(seconds=30)
    assert first_run(hourly, ran(now - timedelta(minutes=20)), now, UTC) == now + timedelta(
        minutes=40
    )
    # Its time passed while no process ran: once, soon (missed runs coalesce).
    assert first_run(hourly, ran(now - timedelta(hours=5)), now, UTC) == now + timedelta(seconds=30)
    daily = settings.upkeep  # 04:17
    tomorrow = datetime(2026, 12, 2, 4, 17, tzinfo=UTC)
    assert first_run(daily, None, now, UTC) == tomorrow
    assert first_run(daily, ran(datetime(2026, 12, 1, 4, 17, tzinfo=UTC)), now, UTC) == tomorrow
    missed = ran(datetime(2026, 11, 29, 4, 17, tzinfo=UTC))
    assert first_run(daily, missed, now, UTC) == now + timedelta(seconds=30)


async def test_messages_keep_coming_while_jobs_run(manager: SessionManager) -> None:
    """A turn's writes go on between a cleanup's batches (the bench measures how fast)."""
    clock = Clock()
    old = await manager.open(ChatKey("telegram", "old"))
    await talk(manager, old.id, [f"old {i}" for i in range(300)])
    clock.advance(manager.settings.expire_after_s + 60)
    await runner_for(manager, clock).run_now("expire")
    clock.advance(manager.settings.retain_for_s + 1)
    live = await manager.open(KEY)
    runner = runner_for(manager, clock, cleanup={"batch": 20})
    cleanup = asyncio.create_task(runner.run_now("cleanup"))
    written = 0
    while not cleanup.done():
        await manager.add_message(live.id, Role.USER, f"live {written}")
        written += 1
    run = await cleanup
    assert run.counts["messages"] == 300 and run.counts["sessions"] == 1
    assert written > 1  # turns were served between the batches, not after them
    assert len(await manager.messages(live.id)) == written


async def test_shutdown_waits_for_a_summary_only_for_the_grace_then_cancels_it(
    tmp_path: Path, db_url: str, gate: Gate
) -> None:
    """A Messages API that never answers a summary (and a summarizer timeout far off)
    must not hold the shutdown: the app's stop waits the grace (0 here), cancels the
    summary, and closes; the messages are all still there for the next start."""
    from pydantic import SecretStr

    from bots.app import Palaver
    from bots.config import Config, PalaverSettings, Secrets
    from memory.settings import DatabaseSettings, MemorySettings

    gate.hold = True  # never released while the app runs
    async with FakeAnthropic(responder=gate) as fake:
        config = Config(
            palaver=PalaverSettings(data_dir=tmp_path, shutdown_grace_s=0),
            database=DatabaseSettings(url=db_url),
            memory=MemorySettings(token_limit=2000, summary_max_tokens=200),
            claude=ClaudeSettings(base_url=fake.url, summarizer_timeout_s=600, max_retries=0),
            secrets=Secrets(anthropic_api_key=SecretStr(fake.api_key)),
        )
        app = Palaver(config)
        await app.start()
        manager = app.manager
        session = await manager.open(KEY)
        lines = [f"line {i}: " + "words to remember " * 40 for i in range(20)]
        await talk(manager, session.id, lines)
        assert await manager.maybe_summarize(session.id)
        async with asyncio.timeout(30):
            await gate.entered.wait()
        async with asyncio.timeout(30):  # the summarizer's own timeout is 600 s
            await app.stop()
        gate.release.set()
    app = Palaver(config)
    await app.start()
    try:
        assert await app.manager.summaries(session.id) == []
        assert len(await app.manager.messages(session.id)) == len(lines)
    finally:
        await app.stop()
