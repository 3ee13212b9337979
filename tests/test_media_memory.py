"""Files kept with their message (memory.attachments, memory.store.attachments): stored
once per content, counted in the token ledger, carried by the cached tail and the
context while the budget allows, shown once to the summarizer and not sent again,
exported by reference, and deleted with their session. SQLite always, PostgreSQL when
TEST_DATABASE_URL is set."""

from __future__ import annotations

import base64
import gc
import itertools
import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, update

from conversation.export import write_export
from memory.attachments import NewAttachment, StoredAttachment
from memory.context import (
    MAX_MEDIA,
    MAX_MEDIA_BYTES,
    MAX_PDF_PAGES,
    Block,
    MediaRef,
    TailMessage,
    build_context,
    media_tokens,
)
from memory.errors import InvalidMessage
from memory.manager import SessionManager
from memory.store import utcnow
from memory.store.rows import blobs, sessions
from memory.summarizer import SummaryInput, SummaryText
from memory.summarizing import (
    MAX_SUMMARY_FILE_BYTES,
    MAX_SUMMARY_FILE_TOKENS,
    MAX_SUMMARY_FILES,
    files_to_show,
)
from memory.tokens import MESSAGE_OVERHEAD
from memory.types import ChatKey, Role
from tests.conftest import ManagerFactory
from tests.media import jpeg, pdf, png

KEY = ChatKey("telegram", "42")
OTHER = ChatKey("discord", "7")


def photo(width: int = 640, height: int = 480, name: str = "photo.jpg") -> NewAttachment:
    data = jpeg(width, height)
    return NewAttachment.of(
        name, "image", "image/jpeg", data, width * height // 750, width=width, height=height
    )


def document(pages: int = 2, name: str = "report.pdf") -> NewAttachment:
    return NewAttachment.of(name, "pdf", "application/pdf", pdf(pages), pages * 2500, pages=pages)


class Recorder:
    """A summarizer that keeps what it was shown (the model's stand-in, not under test)."""

    name = "recorder"
    reads_files = True

    def __init__(self) -> None:
        self.seen: list[SummaryInput] = []

    async def summarize(self, messages: Sequence[SummaryInput], max_tokens: int) -> SummaryText:
        self.seen.extend(messages)
        return SummaryText(f"summary of {len(messages)} messages", self.name)

    async def merge(self, summaries: Sequence[str], max_tokens: int) -> SummaryText:
        return SummaryText(" | ".join(summaries), self.name)


async def test_files_are_stored_with_their_message_counted_and_kept_once(
    manager: SessionManager,
) -> None:
    session = await manager.open(KEY)
    shot = photo(800, 600, "screenshot.png")
    text = "what is this?\n\n[image: screenshot.png, 800x600]"
    first = await manager.add_message(
        session.id, Role.USER, text, chat=KEY, platform_message_id="1", attachments=[shot]
    )
    again = await manager.add_message(
        session.id,
        Role.USER,
        "and this one?",
        chat=KEY,
        platform_message_id="2",
        attachments=[shot, document(3)],
    )
    # A repeated delivery of the first message links nothing more.
    repeat = await manager.add_message(
        session.id, Role.USER, text, chat=KEY, platform_message_id="1", attachments=[shot]
    )
    assert repeat.duplicate and repeat.seq == first.seq

    assert first.token_count == manager.tokens.count(text) + 640
    assert again.token_count == manager.tokens.count("and this one?") + 640 + 7500
    info = await manager.get(session.id)
    assert info.message_tokens == first.token_count + again.token_count
    files = await manager.attachments(session.id)
    assert sorted(files) == [first.seq, again.seq]
    assert [(a.name, a.kind, a.tokens) for a in files[again.seq]] == [
        ("screenshot.png", "image", 640),
        ("report.pdf", "pdf", 7500),
    ]
    assert files[first.seq][0].sha256 == files[again.seq][0].sha256 == shot.sha256
    assert await manager.store.attachments.count_blobs() == (
        2,
        shot.size + files[again.seq][1].size,
    )
    assert await manager.attachment_data(shot.sha256) == shot.data
    assert await manager.attachment_usage(KEY) == (
        shot.size + files[again.seq][1].size,
        frozenset({shot.sha256, files[again.seq][1].sha256}),
    )
    assert await manager.attachment_usage(OTHER) == (0, frozenset())


async def test_the_context_sends_the_files_with_their_turn_and_their_data_is_at_hand(
    manager: SessionManager,
) -> None:
    session = await manager.open(KEY)
    shot = photo()
    await manager.add_message(session.id, Role.USER, "hi")
    await manager.add_message(session.id, Role.ASSISTANT, "hello")
    await manager.add_message(session.id, Role.USER, "see [image]", attachments=[shot])
    context = await manager.build_context(session.id, budget=10_000)
    assert [m.media for m in context.messages] == [(), (), (shot.ref,)]
    assert context.files == 1 and context.media == (shot.ref,)
    assert context.raw_tokens >= shot.tokens
    media = await manager.media_for(context)
    assert base64.b64decode(media[shot.sha256]) == shot.data
    # Text-only contexts ask for nothing.
    plain = await manager.open(OTHER)
    await manager.add_message(plain.id, Role.USER, "just text")
    text_only = await manager.build_context(plain.id)
    assert text_only.files == 0 and await manager.media_for(text_only) == {}


async def test_files_in_the_history_survive_a_restart_untracked_by_the_collector(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager()
    session = await manager.open(KEY)
    shot = photo()
    await manager.add_message(session.id, Role.USER, "look", attachments=[shot])
    await manager.add_message(session.id, Role.ASSISTANT, "a photo")
    await manager.add_message(session.id, Role.USER, "text only")
    restarted = await make_manager()  # another process over the same database
    context = await restarted.build_context(session.id)
    assert context.messages[0].media == (shot.ref,) and context.files == 1
    entry = restarted.cache.peek(session.id)
    assert entry is not None and entry.media == 1
    assert [len(m) for m in entry.tail] == [5, 4, 4]  # text-only messages stay 4-tuples
    for _level in range(3):  # the collector untracks one level of nested tuples a pass
        gc.collect()
    assert not any(gc.is_tracked(m) for m in entry.tail)


async def test_summarized_files_are_named_to_the_summarizer_once_and_not_sent_again(
    make_manager: ManagerFactory,
) -> None:
    recorder = Recorder()
    manager = await make_manager(summarizer=recorder)
    session = await manager.open(KEY)
    text = "the plan\n\n[image: whiteboard.jpg, 640x480]"
    await manager.add_message(
        session.id, Role.USER, text, attachments=[photo(name="whiteboard.jpg")]
    )
    for i in range(9):
        await manager.add_message(session.id, Role.ASSISTANT if i % 2 == 0 else Role.USER, f"m{i}")
    summary = await manager.fold(session.id)
    assert summary is not None and summary.first_seq == 1
    assert [m.text for m in recorder.seen].count(text) == 1  # its description, once
    context = await manager.build_context(session.id)
    assert context.files == 0 and all(not m.media for m in context.messages)
    entry = manager.cache.peek(session.id)
    assert entry is not None and entry.media == 0
    await manager.fold(session.id)
    assert [m.text for m in recorder.seen].count(text) == 1
    # A restarted process agrees: the folded file is not in the tail.
    restarted = await make_manager()
    assert (await restarted.build_context(session.id)).files == 0


async def test_a_fold_and_a_closing_summary_hand_the_summarizer_their_files_once(
    make_manager: ManagerFactory,
) -> None:
    recorder = Recorder()
    manager = await make_manager(summarizer=recorder)
    session = await manager.open(KEY)
    board = photo(name="whiteboard.jpg")
    await manager.add_message(session.id, Role.USER, "the plan", attachments=[board])
    for i in range(9):
        await manager.add_message(session.id, Role.ASSISTANT if i % 2 == 0 else Role.USER, f"m{i}")
    await manager.fold(session.id)
    [shown] = [m for m in recorder.seen if m.files]
    assert shown.seq == 1 and [f.name for f in shown.files] == ["whiteboard.jpg"]
    assert base64.b64decode(shown.files[0].data) == board.data
    assert shown.files[0].media_type == "image/jpeg"
    assert "base64" not in repr(shown) and shown.files[0].data not in repr(shown)
    # The closing summary covers the rest: a file of the tail is shown; the folded one
    # is not shown again (its summary's text stands for it).
    report = document(name="notes.pdf")
    await manager.add_message(session.id, Role.USER, "notes", attachments=[report])
    recorder.seen.clear()
    await manager.closing_summary(session.id)
    assert [f.name for m in recorder.seen for f in m.files] == ["notes.pdf"]
    assert recorder.seen[-1].files[0].media_type == "application/pdf"


async def test_a_summary_shows_at_most_twenty_files_and_names_the_rest(
    make_manager: ManagerFactory,
) -> None:
    recorder = Recorder()
    manager = await make_manager(summarizer=recorder)
    session = await manager.open(KEY)
    files = [document(name="a.pdf")] + [photo(32 + i, 32, name=f"p{i}.jpg") for i in range(21)]
    names = ", ".join(f.name for f in files)
    await manager.add_message(session.id, Role.USER, f"files: {names}", attachments=files)
    for i in range(9):
        await manager.add_message(session.id, Role.ASSISTANT if i % 2 == 0 else Role.USER, f"m{i}")
    await manager.fold(session.id)
    [shown] = [m for m in recorder.seen if m.files]
    assert [f.name for f in shown.files] == [f.name for f in files[:MAX_SUMMARY_FILES]]
    assert "p20.jpg" in shown.text  # beyond the limit: named by the text alone


def test_the_files_a_summary_shows_stay_within_bytes_and_tokens() -> None:
    def stored(
        seq: int, name: str, size: int, tokens: int, pages: int | None = None
    ) -> StoredAttachment:
        sha = name * 8
        if pages is not None:
            return StoredAttachment(
                seq, 0, name, "pdf", "application/pdf", sha, size, tokens, None, None, pages
            )
        return StoredAttachment(seq, 0, name, "image", "image/png", sha, size, tokens, 1, 1, None)

    big = MAX_SUMMARY_FILE_BYTES // 2 + 1
    found = {
        1: [stored(1, "a", big, 10)],
        2: [stored(2, "b", big, 10), stored(2, "c", 10, 10)],  # b does not fit, c does
        3: [stored(3, "d", 10, MAX_SUMMARY_FILE_TOKENS)],  # over the tokens left
        4: [stored(4, "a", big, 10)],  # the same file again goes once
        5: [stored(5, "e", 10, 10, pages=60), stored(5, "f", 10, 10, pages=41)],  # 101 pages
    }
    assert [f.name for f in files_to_show(found)] == ["a", "c", "e"]


async def test_the_extractive_fallback_summarizes_messages_with_files_by_name(
    make_manager: ManagerFactory,
) -> None:
    class Failing(Recorder):
        async def summarize(self, messages: Sequence[SummaryInput], max_tokens: int) -> SummaryText:
            await super().summarize(messages, max_tokens)
            raise RuntimeError("the model is down")

    failing = Failing()
    manager = await make_manager(summarizer=failing)
    session = await manager.open(KEY)
    text = "Look at this Whiteboard\n\n[image: whiteboard.jpg, 640x480]"
    await manager.add_message(
        session.id, Role.USER, text, attachments=[photo(name="whiteboard.jpg")]
    )
    for i in range(9):
        await manager.add_message(session.id, Role.ASSISTANT if i % 2 == 0 else Role.USER, f"m{i}")
    summary = await manager.fold(session.id)
    assert summary is not None and summary.fallback and summary.summarizer == "extractive"
    assert "whiteboard.jpg" in summary.text
    assert any(m.files for m in failing.seen)  # the model was offered the file


async def test_files_go_with_a_suffix_of_the_window_and_the_newest_text_always_fits() -> None:
    def message(text: str, tokens: int, refs: tuple[MediaRef, ...] = ()) -> TailMessage:
        return ("user", tokens, text, None, refs) if refs else ("user", tokens, text, None)

    def ref(name: str, tokens: int, size: int = 1000, pages: int = 0) -> MediaRef:
        return (name, "image/png" if not pages else "application/pdf", tokens, size, pages)

    tail = [
        message("old", 1100, (ref("a", 1000),)),
        ("assistant", 10, "ok", None),
        message("mid", 1100, (ref("b", 1000),)),
        ("assistant", 10, "ok", None),
        message("new", 1100, (ref("c", 1000),)),
    ]
    system = Block("", 0)
    wide = build_context(1, system=system, summaries=[], tail=tail, budget=10_000, media=True)
    assert [m.media for m in wide.messages] == [
        (ref("a", 1000),),
        (),
        (ref("b", 1000),),
        (),
        (ref("c", 1000),),
    ]
    # Room for two files: the oldest message goes as its text alone, and so does
    # anything older than a message whose files did not fit.
    narrow = build_context(1, system=system, summaries=[], tail=tail, budget=2400, media=True)
    assert [m.media for m in narrow.messages] == [(), (), (ref("b", 1000),), (), (ref("c", 1000),)]
    assert narrow.raw_tokens == 100 + 10 + 1100 + 10 + 1100 + 5 * MESSAGE_OVERHEAD
    assert narrow.raw_tokens <= 2400 and narrow.media_left_out == 0
    # The newest message's text fits when its files do not: they are left out, counted.
    tiny = build_context(1, system=system, summaries=[], tail=tail, budget=500, media=True)
    assert tiny.messages[-1].text == "new" and tiny.messages[-1].media == ()
    assert tiny.media_left_out == 1 and tiny.files == 0
    # The request's limits hold: at most MAX_MEDIA files and MAX_PDF_PAGES pages.
    many = [message(f"m{i}", 20, (ref(f"i{i}", 10),)) for i in range(MAX_MEDIA + 5)]
    limited = build_context(1, system=system, summaries=[], tail=many, budget=10**6, media=True)
    assert limited.files == MAX_MEDIA
    assert limited.media == tuple(ref(f"i{i}", 10) for i in range(5, MAX_MEDIA + 5))
    pdfs = [message(f"p{i}", 2000, (ref(f"p{i}", 1900, pages=40),)) for i in range(3)]
    paged = build_context(1, system=system, summaries=[], tail=pdfs, budget=10**6, media=True)
    assert paged.files == 2 and sum(r[4] for r in paged.media) <= MAX_PDF_PAGES


refs = st.lists(
    st.builds(
        lambda n, tokens, size, pages: (
            f"f{n}",
            "application/pdf" if pages else "image/png",
            tokens,
            size,
            pages,
        ),
        st.integers(0, 10**6),
        st.integers(1, 2000),
        st.integers(1, 6_000_000),
        st.integers(0, 60),
    ),
    min_size=1,
    max_size=4,
).map(tuple)
messages = st.one_of(
    st.tuples(
        st.sampled_from(["user", "assistant"]),
        st.integers(1, 300),
        st.text(min_size=1, max_size=8),
        st.none(),
    ),
    st.builds(
        lambda text, author, files: ("user", text + sum(r[2] for r in files), "x", author, files),
        st.integers(1, 300),
        st.none(),
        refs,
    ),
)


@given(
    tail=st.lists(messages, max_size=40),
    budget=st.integers(500, 40_000),
    factor=st.floats(0.5, 2.0),
)
def test_a_context_with_files_holds_the_budget_and_the_requests_limits(
    tail: list[TailMessage], budget: int, factor: float
) -> None:
    # Each file its own (a file sent twice is one blob, but each message carries it).
    tail = [
        m if len(m) < 5 else (*m[:4], tuple((f"f{i}-{j}", *r[1:]) for j, r in enumerate(m[4])))
        for i, m in enumerate(tail)
    ]
    try:
        context = build_context(
            1,
            system=Block("s", 50),
            summaries=[],
            tail=tail,
            budget=budget,
            factor=factor,
            media=True,
        )
    except InvalidMessage:
        newest = tail[-1][1] - media_tokens(tail[-1]) + MESSAGE_OVERHEAD
        assert 50 + newest > int(budget / factor)  # only when its text cannot fit
        return
    assert context.estimated_tokens <= budget
    files = context.media
    assert len(files) == context.files <= MAX_MEDIA
    assert sum(r[3] for r in files) <= MAX_MEDIA_BYTES and sum(r[4] for r in files) <= MAX_PDF_PAGES
    # Files go with the newest messages that have files: once a message's files are left
    # out, no older message's are sent (a message with no files breaks no run).
    sent = set(files)
    flags = [all(r in sent for r in m[4]) for m in tail if len(m) > 4]
    assert flags == sorted(flags)
    for first, second in itertools.pairwise(context.messages):
        assert first.role is not second.role


async def test_files_are_deleted_with_their_session_by_retention(
    manager: SessionManager,
) -> None:
    old = await manager.open(KEY)
    shared, own = photo(), photo(320, 240, "own.jpg")
    await manager.add_message(old.id, Role.USER, "both", attachments=[shared, own])
    live = await manager.open(OTHER)
    await manager.add_message(live.id, Role.USER, "the shared one", attachments=[shared])
    await manager.reset(KEY)
    long_ago = utcnow() - timedelta(seconds=manager.settings.retain_for_s + 7200)
    async with manager.store.db.writer.begin() as conn:
        await conn.execute(
            update(sessions)
            .where(sessions.c.id == old.id)
            .values(ended_at=long_ago, last_activity_at=long_ago)
        )
        await conn.execute(update(blobs).values(last_used_at=long_ago))
    assert (await manager.delete_expired())["sessions"] == 1
    assert await manager.attachments(old.id) == {}
    assert await manager.delete_orphaned_attachments() == 1  # own.jpg: nothing links to it
    assert await manager.attachment_data(own.sha256) is None
    assert await manager.attachment_data(shared.sha256) == shared.data  # still linked
    assert await manager.delete_orphaned_attachments() == 0


async def test_a_blob_just_written_is_spared_by_the_sweep(manager: SessionManager) -> None:
    # put before its message is appended: the sweep must not take it meanwhile.
    orphan = photo()
    await manager.store.attachments.put_blobs([orphan])
    assert await manager.delete_orphaned_attachments() == 0
    assert await manager.attachment_data(orphan.sha256) == orphan.data


async def test_the_json_export_references_files_by_hash_and_name(
    manager: SessionManager, tmp_path: Path
) -> None:
    session = await manager.open(KEY)
    shot = photo(name="cat.png")
    await manager.add_message(session.id, Role.USER, "hi")
    await manager.add_message(
        session.id, Role.USER, "cat\n\n[image: cat.png, 640x480]", attachments=[shot]
    )
    path = await write_export(manager, await manager.get(session.id), "json", tmp_path)
    exported: dict[str, Any] = json.loads(path.read_text())
    plain, with_file = exported["messages"]
    assert "attachments" not in plain
    assert with_file["attachments"] == [
        {
            "name": "cat.png",
            "kind": "image",
            "media_type": "image/jpeg",
            "sha256": shot.sha256,
            "bytes": shot.size,
            "width": 640,
            "height": 480,
            "pages": None,
            "tokens": shot.tokens,
        }
    ]
    markdown = await write_export(manager, await manager.get(session.id), "markdown", tmp_path)
    assert "[image: cat.png, 640x480]" in markdown.read_text()


async def test_a_file_memory_cannot_keep_refuses_the_message_whole(manager: SessionManager) -> None:
    session = await manager.open(KEY)
    empty = NewAttachment.of("x.png", "image", "image/png", b"", 1)
    video = NewAttachment.of("x.mp4", "video", "video/mp4", png(4, 4), 1)
    for bad in (empty, video):
        try:
            await manager.add_message(session.id, Role.USER, "x", attachments=[bad])
        except Exception as error:
            assert "not a file memory can keep" in str(error)
        else:
            raise AssertionError("stored")
    assert await manager.messages(session.id) == []


async def test_migration_0006_matches_the_models(manager: SessionManager) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from memory.models import Base

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
        return [d for d in diff if "attachment" in repr(d)]

    async with manager.store.db.reader.connect() as conn:
        assert await conn.run_sync(differences) == []
