"""Exports: a session as Markdown to read, JSON to process, or CSV for a spreadsheet.

A session can hold 100,000 messages, so an export is never built in memory: it is
written to a private temporary file page by page, each page formatted and written in
a worker thread, so that the event loop keeps serving chats meanwhile. The operator's
JSON export can carry the files' bytes too (``files=True``: each attachment gets its
base64 ``data``); each blob is then read from memory only when its message is
written, so one file at a time is held, never the session's files. A file larger
than a platform accepts is compressed, and split into parts if it is still too big.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from conversation.outbound import OutboundFile
from memory.attachments import StoredAttachment
from memory.manager import SessionManager
from memory.private_files import private_dir
from memory.types import Role, SessionInfo, StoredMessage, SummaryRecord, Usage

Format = Literal["markdown", "json", "csv"]
FORMATS: dict[str, Format] = {
    "markdown": "markdown",
    "md": "markdown",
    "json": "json",
    "csv": "csv",
}
SUFFIX = {"markdown": ".md", "json": ".json", "csv": ".csv"}
MIME = {"markdown": "text/markdown", "json": "application/json", "csv": "text/csv"}
FORMAT_ID = "palaver-export/1"
PAGE = 1000


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "-"


def speaker(message: StoredMessage) -> str:
    if message.role is Role.ASSISTANT:
        return "Palaver"
    if message.role is Role.USER:
        return message.author_name or (f"user {message.author_id}" if message.author_id else "User")
    return message.role.value.capitalize()


def _usage(u: Usage | None) -> dict[str, Any] | None:
    return None if u is None else asdict(u)


def session_document(session: SessionInfo) -> dict[str, Any]:
    return {
        "id": session.id,
        "chat": session.chat_ref,
        "scope": session.scope,
        "project_id": session.project_id,
        "interface": session.interface,
        "status": session.status.value,
        "created_at": session.created_at.isoformat(),
        "last_activity_at": session.last_activity_at.isoformat(),
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "usage": _usage(session.usage),
        "carried_summary": session.carried_summary,
        "closing_summary": session.closing_summary,
    }


def summary_document(s: SummaryRecord) -> dict[str, Any]:
    return {
        "first_seq": s.first_seq,
        "last_seq": s.last_seq,
        "level": s.level,
        "text": s.text,
        "summarizer": s.summarizer,
        "fallback": s.fallback,
        "created_at": s.created_at.isoformat(),
    }


def attachment_document(a: StoredAttachment) -> dict[str, Any]:
    """A kept file as the JSON export references it: by name and content hash (the
    bytes stay in the database: ``SessionManager.attachment_data``; an export with
    files adds them as ``data``)."""
    return {
        "name": a.name,
        "kind": a.kind,
        "media_type": a.media_type,
        "sha256": a.sha256,
        "bytes": a.size,
        "width": a.width,
        "height": a.height,
        "pages": a.pages,
        "tokens": a.tokens,
    }


def message_document(
    m: StoredMessage, attachments: list[StoredAttachment] | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "seq": m.seq,
        "role": m.role.value,
        "author_id": m.author_id,
        "author_name": m.author_name,
        "text": m.text,
        "created_at": m.created_at.isoformat(),
        "token_count": m.token_count,
        "platform_message_id": m.platform_message_id,
        "metadata": m.metadata,
        "usage": _usage(m.usage),
    }
    if attachments:
        document["attachments"] = [attachment_document(a) for a in attachments]
    return document


class _Writer:
    """Formats one export into an open text file; each method runs in a worker thread."""

    def __init__(self, out: IO[str], kind: Format) -> None:
        self.out = out
        self.kind = kind
        self.first = True
        self.csv = csv.writer(out) if kind == "csv" else None

    def head(self, session: SessionInfo, summaries: list[SummaryRecord]) -> None:
        out = self.out
        if self.csv is not None:
            self.csv.writerow(
                ["seq", "role", "author_id", "author_name", "created_at", "tokens", "text"]
            )
        elif self.kind == "json":
            out.write(f'{{\n"format": {json.dumps(FORMAT_ID)},\n')
            out.write(f'"session": {json.dumps(session_document(session), ensure_ascii=False)},\n')
            documents = [summary_document(s) for s in summaries]
            out.write(f'"summaries": {json.dumps(documents, ensure_ascii=False)},\n')
            out.write('"messages": [\n')
        else:
            usage = session.usage
            lines = [
                f"# Palaver conversation #{session.id}",
                "",
                f"- Chat: {session.chat_ref or session.scope}",
                f"- Started: {when(session.created_at)}; last activity: "
                f"{when(session.last_activity_at)}; status: {session.status.value}",
                f"- Messages: {session.message_count}; tokens billed: "
                f"{usage.input_tokens:,} in, {usage.output_tokens:,} out; "
                f"cost: ${usage.cost_usd:.4f}",
                "",
            ]
            if session.carried_summary:
                lines += [
                    "## Carried over from the previous conversation",
                    "",
                    session.carried_summary,
                    "",
                ]
            if summaries:
                lines += ["## Summaries of older messages", ""]
                for s in summaries:
                    flag = ", offline summary" if s.fallback else ""
                    lines += [f"### Messages {s.first_seq}-{s.last_seq} (level {s.level}{flag})"]
                    lines += ["", s.text, ""]
            lines += ["## Messages", ""]
            out.write("\n".join(lines) + "\n")

    def page(
        self,
        messages: list[StoredMessage],
        files: dict[int, list[StoredAttachment]] | None = None,
    ) -> None:
        out = self.out
        files = files or {}
        for m in messages:
            if self.csv is not None:
                self.csv.writerow(
                    [
                        m.seq,
                        m.role.value,
                        m.author_id or "",
                        m.author_name or "",
                        m.created_at.isoformat(),
                        m.token_count,
                        m.text,
                    ]
                )
            elif self.kind == "json":
                document = message_document(m, files.get(m.seq))
                out.write(("" if self.first else ",\n") + json.dumps(document))
            else:
                out.write(f"**{speaker(m)}** · {when(m.created_at)}\n\n{m.text}\n\n")
            self.first = False

    def message_head(self, m: StoredMessage) -> None:
        """A JSON message whose files follow one by one (``attachment``), then
        ``message_end``: its document without the closing brace, and the list opened.
        "attachments" is the last field of a message, as ``message_document`` has it."""
        document = json.dumps(message_document(m))
        self.out.write(("" if self.first else ",\n") + document[:-1] + ', "attachments": [')
        self.first = False

    def attachment(self, a: StoredAttachment, data: bytes | None, first: bool) -> None:
        """One file of the open message, with its bytes where memory still has them."""
        document = attachment_document(a)
        if data is not None:
            document["data"] = base64.b64encode(data).decode("ascii")
        self.out.write(("" if first else ", ") + json.dumps(document))

    def message_end(self) -> None:
        self.out.write("]}")

    def tail(self, transcripts: dict[str, list[dict[str, Any]]]) -> None:
        """The end; a Claude Code project's session ends with its Claude Code transcripts."""
        out = self.out
        if self.kind == "json":
            out.write("\n]")
            if transcripts:
                out.write(f',\n"claude_code": {json.dumps(transcripts, ensure_ascii=False)}')
            out.write("\n}\n")
        elif self.kind == "markdown" and transcripts:
            out.write("## Claude Code transcripts\n\n")
            for session_id, entries in transcripts.items():
                out.write(f"### Session {session_id}\n\n")
                for entry in entries:
                    line = transcript_line(entry)
                    if line:
                        out.write(f"- {line}\n")
                out.write("\n")


def transcript_line(entry: dict[str, Any]) -> str:
    """One line of a Claude Code transcript as a reader wants it: who said what, or
    which tool was used; bookkeeping lines are left out."""
    kind = entry.get("type")
    message = entry.get("message")
    if kind not in ("user", "assistant") or not isinstance(message, dict):
        return ""
    content = message.get("content")
    parts: list[str] = []
    for block in content if isinstance(content, list) else [content]:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") == "tool_use":
            parts.append(f"[tool {block.get('name')}: {json.dumps(block.get('input'))[:200]}]")
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            parts.append("[tool result]")
    text = " ".join(p.strip() for p in parts if p and p.strip())
    return f"**{kind}**: {text}" if text else ""


async def write_export(
    manager: SessionManager,
    session: SessionInfo,
    kind: Format,
    directory: Path,
    *,
    files: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``session`` as ``kind`` to a new private file in ``directory``; returns it.

    The file is created 0600 (``mkstemp``): a conversation is nobody else's business.
    ``files`` (JSON only): each attachment carries its bytes as base64 ``data`` (a
    file memory no longer keeps is left a reference). ``on_progress`` is told how
    many messages are written so far.
    """
    if files and kind != "json":
        raise ValueError("only a JSON export carries files")
    path = await asyncio.to_thread(_private_file, directory, f"palaver-{session.id}-", kind)
    try:
        out = await asyncio.to_thread(path.open, "w", encoding="utf-8", newline="")
        try:
            writer = _Writer(out, kind)
            summaries = await manager.summaries(session.id)
            await asyncio.to_thread(writer.head, session, summaries)
            after = 0
            written = 0
            while True:
                page = await manager.messages(session.id, after=after, limit=PAGE)
                if not page:
                    break
                found = None
                if kind == "json":  # the text names each file; JSON references them too
                    found = await manager.attachments(session.id, after=after, through=page[-1].seq)
                if files and found:
                    await _page_with_files(manager, writer, page, found)
                else:
                    await asyncio.to_thread(writer.page, page, found)
                after = page[-1].seq
                written += len(page)
                if on_progress is not None:
                    on_progress(written)
            transcripts = {}
            if session.project_id is not None:
                transcripts = await manager.code_transcript(session.project_id)
                transcripts = {sid: lines for sid, lines in transcripts.items() if lines}
            await asyncio.to_thread(writer.tail, transcripts)
        finally:
            await asyncio.to_thread(out.close)
    except BaseException:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return path


async def _page_with_files(
    manager: SessionManager,
    writer: _Writer,
    page: list[StoredMessage],
    found: dict[int, list[StoredAttachment]],
) -> None:
    """A page whose messages carry their files' bytes: the messages without files
    are written in runs; each file's blob is read (and encoded, off the loop) only as
    its message is written, so one blob at a time is in memory."""
    start = 0
    for index, m in enumerate(page):
        kept = found.get(m.seq)
        if not kept:
            continue
        if start < index:
            await asyncio.to_thread(writer.page, page[start:index])
        await asyncio.to_thread(writer.message_head, m)
        for position, a in enumerate(kept):
            data = await manager.attachment_data(a.sha256)
            await asyncio.to_thread(writer.attachment, a, data, position == 0)
            del data
        await asyncio.to_thread(writer.message_end)
        start = index + 1
    if start < len(page):
        await asyncio.to_thread(writer.page, page[start:])


def _private_file(directory: Path, prefix: str, kind: Format) -> Path:
    private_dir(directory)
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=SUFFIX[kind], dir=directory)
    os.close(handle)
    return Path(name)


def _compress(source: Path, target: Path) -> int:
    """Gzip ``source`` into a new private file ``target``, delete ``source``; the size."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    with source.open("rb") as raw, gzip.open(target, "wb") as packed:
        shutil.copyfileobj(raw, packed, 1 << 20)
    source.unlink(missing_ok=True)
    return target.stat().st_size


def _split(source: Path, limit: int) -> list[Path]:
    parts: list[Path] = []
    with source.open("rb") as raw:
        while chunk := raw.read(limit):
            part = source.with_name(f"{source.name}.part{len(parts) + 1}")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(chunk)
            parts.append(part)
    source.unlink(missing_ok=True)
    return parts


async def fit_for_upload(file: OutboundFile, limit: int) -> tuple[list[OutboundFile], str]:
    """``file`` as files of at most ``limit`` bytes each, and a note on what was done.

    Too large: gzip-compressed; still too large: the compressed file in numbered
    parts (``cat NAME.gz.part* > NAME.gz`` joins them). Replaced files are deleted.
    """
    if await asyncio.to_thread(lambda: file.size) <= limit:
        return [file], ""
    packed = file.path.with_name(file.path.name + ".gz")
    size = await asyncio.to_thread(_compress, file.path, packed)
    name = file.name + ".gz"
    if size <= limit:
        return [OutboundFile(name, packed, "application/gzip")], " (gzip-compressed)"
    paths = await asyncio.to_thread(_split, packed, limit)
    files = [
        OutboundFile(f"{name}.part{i}", path, "application/octet-stream")
        for i, path in enumerate(paths, 1)
    ]
    note = f" (gzip-compressed, in {len(files)} parts: join them with `cat {name}.part* > {name}`)"
    return files, note
