"""The operator's command line: the HTTP API's operations, from a terminal.

    python run.py [--config FILE] sessions list [filters] [--limit N] [--cursor C] [--json]
    python run.py [--config FILE] sessions show ID [--messages N] [--json]
    python run.py [--config FILE] sessions export ID --format json|csv|md [--files] [-o FILE]
    python run.py [--config FILE] sessions import FILE
    python run.py [--config FILE] sessions delete ID [--yes]
    python run.py [--config FILE] stats [--days N] [--json]
    python run.py [--config FILE] jobs list [--json]
    python run.py [--config FILE] jobs run NAME [--json]

The same implementation as the API (conversation.operations) over the same
database, opened (and migrated) for the command's length; a running Palaver may
share it. ``jobs`` builds the application itself (its Claude summarizer included,
when ANTHROPIC_API_KEY is set), without its timetable or bots: a run takes the
job's lease like a scheduled one, so it never runs twice at once with a server.
Tables are drawn with rich; long exports and imports show a progress bar on
stderr. Exit status: 0 done, 1 refused or a job that did not end ok (the message
says why), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bots.app import Palaver
from bots.config import Config, ConfigError, load_config
from bots.http_jobs import plain
from bots.redaction import Redactor
from conversation.job_commands import describe_run, when
from conversation.operations import Operations, session_id_of
from memory.database import migrate, open_database
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.private_files import private_dir
from memory.store import Store
from memory.tokens import TokenCounter

COMMANDS = frozenset({"sessions", "stats", "jobs"})


def handles(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (run.py's arguments) is one of these commands."""
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option == "--config" and rest:
            rest.pop(0)
    return bool(rest) and rest[0] in COMMANDS


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="palaver", description="Palaver's operator commands.")
    root.add_argument("--config", type=Path, help="configuration file (default: config.toml)")
    commands = root.add_subparsers(dest="command", required=True)
    sessions = commands.add_parser("sessions", help="list, show, export, import, delete")
    verbs = sessions.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="sessions, newest first")
    for name in ("interface", "chat", "status", "project", "user", "active-since"):
        listing.add_argument(f"--{name}")
    listing.add_argument("--limit", default="50")
    listing.add_argument("--cursor")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = verbs.add_parser("show", help="one session, its summaries and latest messages")
    show.add_argument("id")
    show.add_argument("--messages", type=int, default=20, help="how many of the latest")
    show.add_argument("--json", action="store_true")
    export = verbs.add_parser("export", help="a session as JSON, CSV or Markdown")
    export.add_argument("id")
    export.add_argument("--format", default="json", help="json, csv or md")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.add_argument(
        "--files", action="store_true", help="JSON: include the files' bytes (base64)"
    )
    importing = verbs.add_parser("import", help="restore a JSON export (once)")
    importing.add_argument("file", type=Path)
    delete = verbs.add_parser("delete", help="delete a session and everything of it")
    delete.add_argument("id")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    stats = commands.add_parser("stats", help="usage across all sessions")
    stats.add_argument("--days", type=int, default=14)
    stats.add_argument("--json", action="store_true")
    jobs = commands.add_parser("jobs", help="the scheduled jobs: list them, run one now")
    job_verbs = jobs.add_subparsers(dest="verb", required=True)
    job_list = job_verbs.add_parser("list", help="every job, its last run and its next")
    job_list.add_argument("--json", action="store_true")
    job_run = job_verbs.add_parser("run", help="run a job now, whatever its schedule")
    job_run.add_argument("name")
    job_run.add_argument("--json", action="store_true")
    return root


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """A parser's subcommands: name, parser, help."""
    found = []
    for action in parser._actions:  # argparse keeps its subcommands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return found


def overview() -> str:
    """The operator's commands, one line each, from the parser itself (so that
    run.py --help names them and never lists one that is gone)."""
    lines = ["operator commands (python run.py COMMAND --help for their options):"]
    rows: list[tuple[str, str]] = []
    for name, sub, about in _commands(parser()):
        verbs = _commands(sub)
        rows += [(f"{name} {verb}", text) for verb, _, text in verbs] or [(name, about)]
    width = max(len(command) for command, _ in rows)
    lines += [f"  {command:<{width}}  {text}" for command, text in rows]
    return "\n".join(lines)


def report_config_error(error: ConfigError) -> None:
    """A configuration that cannot load, one line per problem on stderr. The config
    is not there to say what its secrets are: those of the environment are
    redacted (a token pasted into a URL setting is echoed in its problem)."""
    redactor = Redactor.from_environ(os.environ)
    for line in str(error).splitlines():
        print(f"palaver: {redactor.redact(line)}", file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        config = load_config(args.config)
    except ConfigError as error:
        report_config_error(error)
        return 2
    out = Console(soft_wrap=False)
    err = Console(stderr=True)
    redactor = Redactor.for_config(config)
    with redactor.installed():
        try:
            if args.command == "jobs":
                return asyncio.run(_jobs(config, args, out))
            return asyncio.run(_with_operations(config, lambda ops: _dispatch(args, ops, out, err)))
        except PalaverError as error:
            err.print(f"palaver: {redactor.redact(str(error))}", markup=False, highlight=False)
            return 1
        except KeyboardInterrupt:
            return 130


async def _with_operations(
    config: Config, work: Callable[[Operations], Coroutine[Any, Any, int]]
) -> int:
    private_dir(config.palaver.data_dir)  # as the app makes it: exports are written there
    database = open_database(config.database_url, config.database)
    try:
        await migrate(database)
        manager = SessionManager(Store(database), TokenCounter(), config.memory)
        await manager.start()
        try:
            exports = config.palaver.data_dir / "exports"
            return await work(Operations(manager, exports, config.http.max_page_size))
        finally:
            await manager.close()
    finally:
        await database.dispose()


async def _jobs(config: Config, args: argparse.Namespace, out: Console) -> int:
    app = Palaver(config)
    await app.start()
    try:
        scheduler = app.scheduler
        if args.verb == "run":
            run = await scheduler.run_now(args.name)
            if args.json:
                out.print_json(json.dumps(plain(run)))
            else:
                out.print(f"{run.job}: {describe_run(run)}", markup=False, highlight=False)
            return 0 if run.outcome == "ok" else 1
        statuses = await scheduler.list_jobs()
        if args.json:
            out.print_json(json.dumps([plain(status) for status in statuses]))
            return 0
        table = Table(title=f"Jobs ({'on' if config.jobs.enabled else 'off'}; times UTC)")
        for column in ("job", "schedule", "last run", "next run"):
            table.add_column(column)
        for status in statuses:
            last = "never" if status.last_run is None else describe_run(status.last_run)
            if status.running_on is not None:
                upcoming = f"running on {status.running_on}"
            elif not status.enabled:
                upcoming = "off"
            else:
                upcoming = when(status.next_run) if status.next_run else "soon after start"
            table.add_row(status.name, status.schedule, last, upcoming)
        out.print(table)
        return 0
    finally:
        await app.stop()


async def _dispatch(args: argparse.Namespace, ops: Operations, out: Console, err: Console) -> int:
    if args.command == "stats":
        return await _stats(ops, out, args.days, args.json)
    verb = args.verb
    if verb == "list":
        return await _list(ops, out, args)
    if verb == "show":
        return await _show(ops, out, session_id_of(args.id), args.messages, args.json)
    if verb == "export":
        return await _export(
            ops, err, session_id_of(args.id), args.format, args.output, files=args.files
        )
    if verb == "import":
        return await _import(ops, out, err, args.file)
    return await _delete(ops, out, session_id_of(args.id), args.yes)


def _progress(err: Console, what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _usage(u: dict[str, Any]) -> str:
    return f"{u['input_tokens']:,} in / {u['output_tokens']:,} out"


def _tokens(u: dict[str, Any]) -> str:
    cache = f"{u['cache_read_tokens']:,} cache read, {u['cache_write_tokens']:,} cache write"
    return f"{_usage(u)}, {cache}"


async def _list(ops: Operations, out: Console, args: argparse.Namespace) -> int:
    params = {
        key: value
        for key, value in {
            "interface": args.interface,
            "chat": args.chat,
            "status": args.status,
            "project": args.project,
            "user": args.user,
            "active_since": args.active_since,
            "limit": args.limit,
            "cursor": args.cursor,
            "stats": "true",
        }.items()
        if value is not None
    }
    page = await ops.sessions(params)
    if args.json:
        out.print_json(json.dumps(page.document()))
        return 0
    table = Table(title="Sessions, newest first")
    for column in (
        "id",
        "interface",
        "chat / project",
        "status",
        "messages",
        "tokens",
        "cost",
        "last activity",
    ):
        table.add_column(
            column, justify="right" if column in ("id", "messages", "cost") else "left"
        )
    for s in page.items:
        table.add_row(
            str(s["id"]),
            s["interface"],
            s["chat"] or f"project {s['project_id']}",
            s["status"],
            f"{s['message_count']:,}",
            _usage(s["usage"]),
            f"${s['usage']['cost_usd']:.4f}",
            s["last_activity_at"][:19].replace("T", " "),
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")
    return 0


async def _show(ops: Operations, out: Console, session_id: int, latest: int, as_json: bool) -> int:
    session = await ops.session(session_id)
    summaries = await ops.summaries(session_id)
    count = session["message_count"]
    after = str(max(0, count - max(0, latest)))
    page = await ops.messages(
        session_id, {"cursor": after, "limit": str(max(1, min(latest, ops.max_page)))}
    )
    messages = page.items if latest > 0 else []
    if as_json:
        out.print_json(
            json.dumps({"session": session, "summaries": summaries, "messages": messages})
        )
        return 0
    table = Table(title=f"Session #{session_id}", show_header=False)
    for key in (
        "interface",
        "chat",
        "scope",
        "project_id",
        "status",
        "created_at",
        "last_activity_at",
        "ended_at",
        "message_count",
    ):
        table.add_row(key, str(session[key]))
    usage = session["usage"]
    table.add_row(
        "tokens",
        _tokens(usage),
    )
    table.add_row("cost", f"${usage['cost_usd']:.4f}")
    for key, value in session["stats"].items():
        table.add_row(key, str(value))
    out.print(table)
    for s in summaries:
        out.print(
            f"[bold]Summary of messages {s['first_seq']}-{s['last_seq']}[/] "
            f"(level {s['level']}, {s['summarizer']})"
        )
        out.print(s["text"], markup=False, highlight=False)
    for m in messages:
        who = m["author_name"] or m["author_id"] or m["role"]
        out.print(f"[dim]#{m['seq']} {m['created_at'][:19]}[/] [bold]{who}[/]:", end=" ")
        out.print(m["text"], markup=False, highlight=False)
    return 0


async def _export(
    ops: Operations,
    err: Console,
    session_id: int,
    form: str,
    target: Path | None,
    *,
    files: bool = False,
) -> int:
    kind = ops.export_format(form)
    total = (await ops.manager.get(session_id)).message_count
    with _progress(err, f"exporting #{session_id}") as progress:
        task = progress.add_task("export", total=total or 1)
        _info, path = await ops.export(
            session_id,
            kind,
            files=files,
            on_progress=lambda n: progress.update(task, completed=n),
        )
    try:
        if target is None:
            await asyncio.to_thread(_copy_to_stdout, path)
        else:
            await asyncio.to_thread(_place, path, target)
            err.print(f"wrote {target} ({total:,} messages)")
    finally:
        path.unlink(missing_ok=True)
    return 0


def _copy_to_stdout(path: Path) -> None:
    with path.open("rb") as source:
        shutil.copyfileobj(source, sys.stdout.buffer, 1 << 16)
    sys.stdout.flush()


def _place(path: Path, target: Path) -> None:
    """The private export file becomes ``target`` (0600: a conversation is private)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, target)
    except OSError:  # another file system
        shutil.copyfile(path, target)
    target.chmod(0o600)


async def _import(ops: Operations, out: Console, err: Console, file: Path) -> int:
    try:
        raw = await asyncio.to_thread(file.read_bytes)
    except OSError as error:
        raise PalaverError(f"cannot read {file}: {error.strerror or error}") from None
    with _progress(err, f"importing {file.name}") as progress:
        task = progress.add_task("import", total=None)
        loop = asyncio.get_running_loop()

        def counted(n: int) -> None:
            loop.call_soon_threadsafe(lambda: progress.update(task, completed=n))

        result = await ops.import_export(raw, on_progress=counted)
    if result["imported"]:
        out.print(f"imported session #{result['session_id']} ({result['messages']:,} messages)")
    else:
        out.print(f"session #{result['session_id']}: {result['note']}")
    return 0


async def _delete(ops: Operations, out: Console, session_id: int, yes: bool) -> int:
    session = await ops.session(session_id)
    if not yes:
        if not sys.stdin.isatty():
            raise PalaverError("refusing to delete without --yes when not at a terminal")
        answer = await asyncio.to_thread(
            input, f"Delete session #{session_id} ({session['message_count']:,} messages)? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            out.print("nothing deleted")
            return 1
    result = await ops.delete(session_id)
    out.print(f"deleted session #{result['deleted']} ({result['messages']:,} messages)")
    return 0


async def _stats(ops: Operations, out: Console, days: int, as_json: bool) -> int:
    stats = await ops.stats(days)
    if as_json:
        out.print_json(json.dumps(stats))
        return 0
    usage = stats["usage"]
    overall = Table(title="Palaver", show_header=False)
    sessions = stats["sessions"]
    overall.add_row(
        "sessions", f"{sessions['total']:,} ({sessions['active_or_idle']:,} active or idle)"
    )
    overall.add_row(
        "by state", ", ".join(f"{k} {v:,}" for k, v in sorted(sessions["by_status"].items())) or "-"
    )
    overall.add_row("messages", f"{stats['messages']:,}")
    overall.add_row(
        "tokens",
        _tokens(usage),
    )
    overall.add_row("cost", f"${usage['cost_usd']:.4f}")
    overall.add_row(
        "prompt cache", f"{stats['prompt_cache_read_share']:.0%} of input read from the cache"
    )
    out.print(overall)
    by_interface = Table(title="By interface")
    for column in ("interface", "sessions", "messages", "tokens", "cost"):
        by_interface.add_column(column)
    for row in stats["by_interface"]:
        by_interface.add_row(
            row["interface"],
            f"{row['sessions']:,}",
            f"{row['messages']:,}",
            _usage(row["usage"]),
            f"${row['usage']['cost_usd']:.4f}",
        )
    out.print(by_interface)
    by_day = Table(title=f"Per day (last {days} days, UTC)")
    for column in ("day", "input", "output", "cache read", "cache write", "cost"):
        by_day.add_column(column)
    for row in stats["by_day"]:
        u = row["usage"]
        by_day.add_row(
            row["day"],
            f"{u['input_tokens']:,}",
            f"{u['output_tokens']:,}",
            f"{u['cache_read_tokens']:,}",
            f"{u['cache_write_tokens']:,}",
            f"${u['cost_usd']:.4f}",
        )
    out.print(by_day)
    return 0
