"""An in-process fake of the Telegram Bot API for tests and benchmarks.

It speaks the real wire protocol (``/bot<token>/<method>`` with JSON, form or multipart
bodies, the ``{"ok": ...}`` envelope, Telegram's error codes and descriptions, long polling
and file downloads) so the real python-telegram-bot ``Application`` can be pointed at it via
``base_url``/``base_file_url``. Tests then exercise PTB's own HTTP, parsing, error mapping
and polling code instead of a mock of it, and drive the bot as users would.

Text limits are counted in UTF-16 code units, as Telegram does for entity offsets; this is
slightly stricter than counting code points for astral characters (emoji), which is the safe
side for a bot that must split long answers.
"""

from __future__ import annotations

import asyncio
import io
import json
import mimetypes
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web
from PIL import Image, UnidentifiedImageError

PHOTO_EDGES = (90, 320, 800, 1280, 2560)  # the long edges of the sizes Telegram makes
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # getFile refuses larger files to bots
JSON = dict[str, Any]
T = TypeVar("T")

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Form bodies carry every value as a string; Telegram types them by parameter name.
_INT_PARAMS = frozenset(
    {
        "chat_id",
        "message_id",
        "message_thread_id",
        "draft_id",
        "offset",
        "limit",
        "reply_to_message_id",
        "user_id",
        "from_chat_id",
        "cache_time",
    }
)
_FLOAT_PARAMS = frozenset({"timeout"})
_BOOL_PARAMS = frozenset(
    {
        "disable_notification",
        "protect_content",
        "allow_sending_without_reply",
        "drop_pending_updates",
        "disable_web_page_preview",
        "disable_content_type_detection",
        "show_alert",
        "allow_paid_broadcast",
    }
)
_JSON_PARAMS = frozenset(
    {
        "entities",
        "caption_entities",
        "reply_parameters",
        "reply_markup",
        "link_preview_options",
        "commands",
        "scope",
        "allowed_updates",
        "message_ids",
    }
)


class ApiError(Exception):
    """An error answered with Telegram's ``{"ok": false, ...}`` envelope."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after


def bad_request(reason: str) -> ApiError:
    """Telegram prefixes every 400 description with "Bad Request: "."""
    return ApiError(400, f"Bad Request: {reason}")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: the unit of Telegram's limits and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


# ---------------------------------------------------------------------------------------------
# HTML parse mode, modelled on TDLib's parser (same acceptance rules and error texts).
# ---------------------------------------------------------------------------------------------

_HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
    "tg-time": "date_time",
}
_SPACES = " \t\r\n\v\f"
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


class HtmlParseError(ValueError):
    """Raised with TDLib's reason text; answered as "can't parse entities: <reason>"."""


@dataclass
class _OpenTag:
    name: str
    attrs: dict[str, str]
    offset: int  # UTF-16 offset in the parsed text
    out_index: int  # index into the output pieces, to recover the tag's content
    order: int


def _decode_entity(s: str, pos: int) -> tuple[str | None, int]:
    """Decode ``&...`` at ``pos`` like TDLib: known names and numbers, ';' optional."""
    n = len(s)
    j = pos + 1
    if j < n and s[j] == "#":
        j += 1
        base, digits = 10, "0123456789"
        if j < n and s[j] in "xX":
            j += 1
            base, digits = 16, "0123456789abcdefABCDEF"
        value = 0
        while j < n and s[j] in digits:
            value = value * base + int(s[j], 16)
            j += 1
            if value >= 0x10FFFF:
                return None, pos
        if value == 0 or j - pos >= 10:
            return None, pos
        if 0xD800 <= value <= 0xDFFF:
            raise HtmlParseError(
                "Text contains invalid Unicode characters after decoding HTML entities, "
                "check for unmatched surrogate code units"
            )
        char = chr(value)
    else:
        while j < n and s[j].isascii() and s[j].isalpha():
            j += 1
        char_or_none = _NAMED_ENTITIES.get(s[pos + 1 : j])
        if char_or_none is None:
            return None, pos
        char = char_or_none
    if j < n and s[j] == ";":
        j += 1
    return char, j


def parse_html(markup: str, *, strict_entities: bool = False) -> tuple[str, list[JSON]]:
    """Return (plain text, entities) for ``parse_mode=HTML`` or raise ``HtmlParseError``.

    Unknown ``&name;`` and bare ``&`` pass through literally, as on Telegram; with
    ``strict_entities`` they are rejected instead, to catch missing escaping in our renderer.
    """
    out: list[str] = []
    utf16 = 0
    stack: list[_OpenTag] = []
    done: list[tuple[int, JSON, str | None]] = []  # (open order, entity, code language)
    order = 0
    i, n = 0, len(markup)

    def at(pos: int) -> int:
        return len(markup[:pos].encode())

    while i < n:
        c = markup[i]
        if c == "&":
            decoded, j = _decode_entity(markup, i)
            if decoded is not None:
                out.append(decoded)
                utf16 += utf16_len(decoded)
                i = j
                continue
            if strict_entities:
                raise HtmlParseError(f"Unsupported HTML entity at byte offset {at(i)}")
        if c != "<":
            out.append(c)
            utf16 += 2 if ord(c) > 0xFFFF else 1
            i += 1
            continue
        begin = i
        i += 1
        if i < n and markup[i] == "/":
            if not stack:
                raise HtmlParseError(f"Unexpected end tag at byte offset {at(begin)}")
            i += 1
            j = i
            while i < n and markup[i] not in _SPACES and markup[i] != ">":
                i += 1
            end_name = markup[j:i].lower()
            while i < n and markup[i] in _SPACES:
                i += 1
            if i >= n or markup[i] != ">":
                raise HtmlParseError(f"Unclosed end tag at byte offset {at(begin)}")
            i += 1
            top = stack.pop()
            if end_name and end_name != top.name:
                raise HtmlParseError(
                    f"Unmatched end tag at byte offset {at(begin)}, "
                    f'expected "</{top.name}>", found "</{end_name}>"'
                )
            entity = _close_tag(top, utf16, "".join(out[top.out_index :]))
            if entity is not None:
                done.append((top.order, *entity))
            continue
        j = i
        while i < n and markup[i] not in _SPACES and markup[i] != ">":
            i += 1
        if i >= n:
            raise HtmlParseError(f"Unclosed start tag at byte offset {at(begin)}")
        name = markup[j:i].lower()
        if name not in _HTML_TAGS:
            raise HtmlParseError(f'Unsupported start tag "{name}" at byte offset {at(begin)}')
        attrs: dict[str, str] = {}
        while True:
            while i < n and markup[i] in _SPACES:
                i += 1
            if i >= n:
                raise HtmlParseError(f"Unclosed start tag at byte offset {at(begin)}")
            if markup[i] == ">":
                i += 1
                break
            a = i
            while i < n and markup[i] not in _SPACES and markup[i] not in "=>":
                i += 1
            attr = markup[a:i].lower()
            if not attr:
                raise HtmlParseError(
                    f'Empty attribute name in the tag "{name}" at byte offset {at(begin)}'
                )
            while i < n and markup[i] in _SPACES:
                i += 1
            if i >= n or markup[i] != "=":
                attrs[attr] = ""
                continue
            i += 1
            while i < n and markup[i] in _SPACES:
                i += 1
            if i >= n:
                raise HtmlParseError(f'Unclosed start tag "{name}" at byte offset {at(begin)}')
            quote = markup[i]
            if quote not in "'\"":
                t = i
                while i < n and markup[i].isascii() and (markup[i].isalnum() or markup[i] in ".-"):
                    i += 1
                if i >= n or (markup[i] not in _SPACES and markup[i] != ">"):
                    raise HtmlParseError(f"Unexpected end of name token at byte offset {at(t)}")
                attrs[attr] = markup[t:i]
                continue
            i += 1
            value: list[str] = []
            while i < n and markup[i] != quote:
                if markup[i] == "&":
                    decoded, j = _decode_entity(markup, i)
                    if decoded is not None:
                        value.append(decoded)
                        i = j
                        continue
                value.append(markup[i])
                i += 1
            if i < n:
                i += 1
            attrs[attr] = "".join(value)
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise HtmlParseError(
                f'Tag "span" must have class "tg-spoiler" at byte offset {at(begin)}'
            )
        if name == "tg-emoji" and not attrs.get("emoji-id", "").isdigit():
            raise HtmlParseError("Invalid custom emoji identifier specified")
        stack.append(_OpenTag(name, attrs, utf16, len(out), order))
        order += 1
    if stack:
        raise HtmlParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    return "".join(out), _merge_pre_code(done)


def _close_tag(tag: _OpenTag, end: int, content: str) -> tuple[JSON, str | None] | None:
    """The entity a closed tag yields (none when empty), plus a ``code`` block's language."""
    length = end - tag.offset
    if length <= 0:
        return None
    entity: JSON = {"type": _HTML_TAGS[tag.name], "offset": tag.offset, "length": length}
    language: str | None = None
    if tag.name == "a":
        url = tag.attrs.get("href") or content
        if "." not in url and "://" not in url:
            return None  # TDLib drops links whose URL does not parse
        entity["url"] = url
    elif tag.name == "blockquote" and "expandable" in tag.attrs:
        entity["type"] = "expandable_blockquote"
    elif tag.name == "tg-emoji":
        entity["custom_emoji_id"] = tag.attrs["emoji-id"]
    elif tag.name == "tg-time":
        return None  # accepted but not modelled
    elif tag.name == "code":
        cls = tag.attrs.get("class", "")
        if cls.startswith("language-") and len(cls) > len("language-"):
            language = cls[len("language-") :]
    return entity, language


def _merge_pre_code(done: list[tuple[int, JSON, str | None]]) -> list[JSON]:
    """``<pre><code class="language-x">`` over the same range is one ``pre`` with language."""
    pres = {(e["offset"], e["length"]): e for _, e, _ in done if e["type"] == "pre"}
    result: list[tuple[int, JSON]] = []
    for order, entity, language in done:
        if language is not None and (entity["offset"], entity["length"]) in pres:
            pres[(entity["offset"], entity["length"])]["language"] = language
            continue
        result.append((order, entity))
    result.sort(key=lambda item: (item[1]["offset"], -item[1]["length"], item[0]))
    return [entity for _, entity in result]


def _trim(text: str, entities: list[JSON]) -> tuple[str, list[JSON]]:
    """Telegram strips surrounding whitespace; entity offsets move with the text."""
    stripped = text.strip()
    shift = utf16_len(text[: len(text) - len(text.lstrip())])
    size = utf16_len(stripped)
    kept: list[JSON] = []
    for entity in entities:
        start = max(entity["offset"] - shift, 0)
        end = min(entity["offset"] + entity["length"] - shift, size)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


_COMMAND_RE = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/@])")
_MENTION_RE = re.compile(r"(?<![\w@/])@[A-Za-z0-9_]{5,32}(?!\w)")


def auto_entities(text: str) -> list[JSON]:
    """bot_command and mention entities as Telegram's clients/servers attach them."""
    found: list[JSON] = []
    for pattern, kind in ((_COMMAND_RE, "bot_command"), (_MENTION_RE, "mention")):
        for match in pattern.finditer(text):
            found.append(
                {
                    "type": kind,
                    "offset": utf16_len(text[: match.start()]),
                    "length": utf16_len(match.group()),
                }
            )
    found.sort(key=lambda e: e["offset"])
    return found


# ---------------------------------------------------------------------------------------------
# The fake server
# ---------------------------------------------------------------------------------------------


@dataclass
class Upload:
    """A file received in a multipart request."""

    filename: str
    data: bytes
    mime_type: str


@dataclass
class StoredFile:
    """A file Telegram knows: downloadable once ``getFile`` assigned its ``file_path``."""

    file_id: str
    file_unique_id: str
    data: bytes
    kind: str  # documents / photos / voice / stickers: the folder of file_path
    file_name: str | None = None
    mime_type: str | None = None
    file_path: str | None = None


@dataclass
class _Flood:
    remaining: int
    retry_after: int
    after: int = 0  # calls let through before the floods begin


@dataclass
class _Refusal:
    remaining: int
    description: str
    after: int = 0  # calls let through before the refusals begin


Handler = Callable[[JSON], Awaitable[Any]]


class FakeTelegram:
    """A Bot API server on 127.0.0.1 with inspection and user-driving helpers for tests."""

    def __init__(
        self,
        token: str = "123:ABC",
        *,
        bot_id: int = 999,
        bot_username: str = "palaver_test_bot",
        bot_first_name: str = "Palaver",
        latency: float = 0.0,
        strict_html_entities: bool = False,
    ) -> None:
        self.token = token
        self.bot_user: JSON = {
            "id": bot_id,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
        }
        self.latency = latency
        """Seconds added to every call except getUpdates (benchmarks)."""
        self.latencies: dict[str, float] = {}
        """Per-method latency overriding ``latency`` (getUpdates included)."""
        self.held: asyncio.Event | None = None
        """While set to an unset event, every call but getUpdates waits for it to be set."""
        self.in_flight = 0
        """Calls (but getUpdates) being answered right now: what arrived and waits."""
        self.strict_html_entities = strict_html_entities
        self.sent: list[tuple[str, JSON]] = []
        """Every bot→Telegram call but getUpdates, in arrival order, failed ones included."""
        self.errors: list[tuple[str, JSON, int, str]] = []
        """(method, params, error_code, description) for every failed call."""
        self.drafts: list[JSON] = []
        # True: sendMessageDraft is refused, as for a bot whose drafts Telegram disabled.
        self.refuse_drafts = False
        self.actions: list[JSON] = []
        self.documents: list[JSON] = []
        self.callback_answers: list[JSON] = []
        self.command_sets: dict[tuple[str, str], list[JSON]] = {}
        self.files: dict[str, StoredFile] = {}
        self.chats: dict[int, JSON] = {}
        self.updates: list[JSON] = []
        """Updates not yet confirmed by a getUpdates offset."""
        self.confirmed_offset = 0
        self.get_updates_calls = 0
        self._store: dict[int, dict[int, JSON]] = {}
        self._next_message_id: dict[int, int] = {}
        self._next_update_id = 1
        self._file_counter = 0
        self._callback_counter = 0
        self._floods: dict[str, list[_Flood]] = {}
        self._outages: dict[str, int] = {}
        self._refusals: dict[str, list[_Refusal]] = {}
        self._allowed_updates: set[str] | None = None
        self._poll_generation = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._methods: dict[str, tuple[str, Handler]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "logOut": self._true,
                "close": self._true,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "getUpdates": self._get_updates,
                "sendMessage": self._send_message,
                "editMessageText": self._edit_message_text,
                "deleteMessage": self._delete_message,
                "sendMessageDraft": self._send_message_draft,
                "sendChatAction": self._send_chat_action,
                "setMyCommands": self._set_my_commands,
                "getMyCommands": self._get_my_commands,
                "deleteMyCommands": self._delete_my_commands,
                "sendDocument": self._send_document,
                "getFile": self._get_file,
                "answerCallbackQuery": self._answer_callback_query,
            }.items()
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind a free port; handlers are cancelled when the client disconnects."""
        app = web.Application(client_max_size=64 * 1024 * 1024)  # Bot API uploads: 50 MB
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)  # bursts of new connections
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def close(self) -> None:
        """Wake long polls first so shutdown does not wait for their timeouts."""
        self._closing = True
        self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """For ``ApplicationBuilder().base_url``: PTB appends the token, then ``/<method>``."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """For ``ApplicationBuilder().base_file_url``: PTB appends token and ``/<file_path>``."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    @property
    def bot_id(self) -> int:
        return int(self.bot_user["id"])

    @property
    def bot_username(self) -> str:
        return str(self.bot_user["username"])

    # -- fault injection ------------------------------------------------------------------------

    def flood(
        self, method: str = "sendMessage", times: int = 1, retry_after: int = 1, *, after: int = 0
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``retry_after``
        (after letting ``after`` calls through: the 2nd part of a long reply, say)."""
        self._floods.setdefault(method.lower(), []).append(_Flood(times, retry_after, after))

    def refuse(
        self,
        method: str = "sendMessage",
        times: int = 1,
        description: str = "Bad Request: message must be non-empty",
        *,
        after: int = 0,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with 400 and ``description``
        (after letting ``after`` calls through), as Telegram refuses a message for good."""
        self._refusals.setdefault(method.lower(), []).append(_Refusal(times, description, after))

    def outage(self, method: str = "getMe", times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 502 Bad Gateway, as the Bot
        API's front end does while Telegram is down."""
        self._outages[method.lower()] = self._outages.get(method.lower(), 0) + times

    # -- driving the bot as users ---------------------------------------------------------------

    def add_chat(
        self,
        chat_id: int,
        chat_type: str = "private",
        *,
        title: str | None = None,
        first_name: str | None = None,
        username: str | None = None,
        is_forum: bool | None = None,
    ) -> JSON:
        """Make a chat known (the bot can only write to chats it has seen)."""
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = {"id": chat_id, "type": chat_type}
            if chat_type == "private":
                chat["first_name"] = first_name or "Tester"
            else:
                chat["title"] = title or f"Chat {chat_id}"
            self.chats[chat_id] = chat
        if username:
            chat["username"] = username
        if is_forum and chat_type == "supergroup":
            chat["is_forum"] = True
        return chat

    def user_message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int | None = None,
        first_name: str = "Tester",
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "en",
        chat_type: str = "private",
        chat_title: str | None = None,
        message_thread_id: int | None = None,
        is_topic_message: bool | None = None,
        reply_to_message_id: int | None = None,
        entities: list[JSON] | None = None,
        caption: str | None = None,
        document: tuple[str, bytes] | tuple[str, bytes, str] | None = None,
        photo: bool | bytes = False,
        sticker: bool | bytes = False,
        animated_sticker: bool = False,
        voice: bool | bytes = False,
        edited: bool = False,
        message_id: int | None = None,
        media_group_id: str | None = None,
    ) -> JSON:
        """Inject a user's message (or its edit) and return the Update dict.

        Entities for ``/commands`` and ``@mentions`` are generated unless ``entities`` is
        given; documents, photos and voice notes are stored so getFile/download work.
        A photo given as real image bytes is offered in the sizes Telegram makes (long
        edges of 90, 320, 800, 1280 and 2560 px, re-encoded as JPEG, up to the
        original's); ``photo=True`` offers two sizes of bytes that are not an image.
        A sticker given as bytes is a static WebP sticker of their size.
        """
        if user_id is None:
            user_id = chat_id if chat_type == "private" else 1001
        user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        if is_topic_message is None:
            is_topic_message = message_thread_id is not None and chat_type != "group"
        chat = self.add_chat(
            chat_id,
            chat_type,
            title=chat_title,
            first_name=first_name,
            username=username if chat_type == "private" else None,
            is_forum=chat_type == "supergroup" and bool(is_topic_message),
        )
        if edited and message_id is None:
            raise ValueError("edited=True needs the message_id of the message being edited")
        now = int(time.time())
        message: JSON = {
            "message_id": message_id if message_id is not None else self._new_message_id(chat_id),
            "from": user,
            "chat": dict(chat),
            "date": now,
        }
        if message_id is not None:
            counter = self._next_message_id.get(chat_id, 1)
            self._next_message_id[chat_id] = max(counter, message_id + 1)
        if message_thread_id is not None:
            message["message_thread_id"] = message_thread_id
        if is_topic_message:
            message["is_topic_message"] = True
        if reply_to_message_id is not None:
            message["reply_to_message"] = self._reply_copy(chat_id, reply_to_message_id)
        if text is not None:
            message["text"] = text
            ents = auto_entities(text) if entities is None else entities
            if ents:
                message["entities"] = ents
        if caption is not None:
            message["caption"] = caption
            cap_ents = auto_entities(caption)
            if cap_ents:
                message["caption_entities"] = cap_ents
        if document is not None:
            name, data = document[0], document[1]
            mime = document[2] if len(document) == 3 else None
            mime = mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
            stored = self.store_file(data, "documents", file_name=name, mime_type=mime)
            message["document"] = self._file_object(stored)
        if isinstance(photo, bytes) and _image_size(photo) is not None:
            message["photo"] = self._photo_sizes(photo)
        elif photo:
            data = photo if isinstance(photo, bytes) else b"\xff\xd8\xff\xe0fake-jpeg"
            small = self.store_file(data[:64], "photos", mime_type="image/jpeg")
            large = self.store_file(data, "photos", mime_type="image/jpeg")
            message["photo"] = [
                {**self._file_object(small, named=False), "width": 90, "height": 90},
                {**self._file_object(large, named=False), "width": 800, "height": 800},
            ]
        if media_group_id is not None:
            message["media_group_id"] = media_group_id
        if sticker or animated_sticker:
            data = sticker if isinstance(sticker, bytes) else b"RIFF-fake-webp"
            width, height = _image_size(data) or (512, 512)
            stored = self.store_file(
                data,
                "stickers",
                mime_type="application/x-tgsticker" if animated_sticker else "image/webp",
            )
            message["sticker"] = {
                **self._file_object(stored, named=False),
                "type": "regular",
                "width": width,
                "height": height,
                "is_animated": animated_sticker,
                "is_video": False,
                "emoji": "👍",
            }
        if voice:
            data = voice if isinstance(voice, bytes) else b"OggS-fake-voice"
            stored = self.store_file(data, "voice", mime_type="audio/ogg")
            message["voice"] = {**self._file_object(stored, named=False), "duration": 1}
        if edited:
            message["edit_date"] = now
        self._store.setdefault(chat_id, {})[message["message_id"]] = message
        return self.push_update({"edited_message" if edited else "message": message})

    def callback_query(
        self,
        chat_id: int,
        message_id: int,
        data: str,
        *,
        user_id: int | None = None,
        first_name: str = "Tester",
    ) -> JSON:
        """Inject a press on an inline button of a bot message; returns the Update dict."""
        self._callback_counter += 1
        user = {"id": user_id if user_id is not None else chat_id, "is_bot": False}
        return self.push_update(
            {
                "callback_query": {
                    "id": str(self._callback_counter),
                    "from": {**user, "first_name": first_name},
                    "message": self._reply_copy(chat_id, message_id),
                    "chat_instance": str(chat_id),
                    "data": data,
                }
            }
        )

    def push_update(self, update: JSON) -> JSON:
        """Queue a raw update (an explicit ``update_id`` is kept, to test re-deliveries)."""
        update = dict(update)
        if "update_id" not in update:
            update = {"update_id": self._next_update_id, **update}
        self._next_update_id = max(self._next_update_id, int(update["update_id"]) + 1)
        for key in ("message", "edited_message"):
            message = update.get(key)
            if isinstance(message, dict) and isinstance(message.get("chat"), dict):
                chat = message["chat"]
                self.chats.setdefault(int(chat["id"]), dict(chat))
                self._store.setdefault(int(chat["id"]), {}).setdefault(
                    int(message["message_id"]), message
                )
        self.updates.append(update)
        self._notify()
        return update

    def _photo_sizes(self, data: bytes) -> list[JSON]:
        """The PhotoSize list Telegram makes of an uploaded photo, smallest first."""
        with Image.open(io.BytesIO(data)) as original:
            image = original.convert("RGB")
        sizes: list[JSON] = []
        for edge in PHOTO_EDGES:
            scale = min(1.0, edge / max(image.size))
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            out = io.BytesIO()
            image.resize(size).save(out, "JPEG", quality=87)
            stored = self.store_file(out.getvalue(), "photos", mime_type="image/jpeg")
            sizes.append(
                {**self._file_object(stored, named=False), "width": size[0], "height": size[1]}
            )
            if scale == 1.0:
                break
        return sizes

    def store_file(
        self,
        data: bytes,
        kind: str = "documents",
        *,
        file_name: str | None = None,
        mime_type: str | None = None,
    ) -> StoredFile:
        """Keep bytes under a new file_id, as Telegram does for uploads in either direction."""
        self._file_counter += 1
        stored = StoredFile(
            file_id=f"FAKE{kind[:3].upper()}{self._file_counter:06d}",
            file_unique_id=f"U{self._file_counter:06d}",
            data=data,
            kind=kind,
            file_name=file_name,
            mime_type=mime_type,
        )
        self.files[stored.file_id] = stored
        return stored

    # -- inspection -----------------------------------------------------------------------------

    def messages(self, chat_id: int, message_thread_id: int | None = None) -> list[JSON]:
        """The bot's current messages in a chat (texts after edits, deletions removed)."""
        return [
            dict(message)
            for message in self._store.get(chat_id, {}).values()
            if message["from"]["id"] == self.bot_id
            and (message_thread_id is None or message.get("message_thread_id") == message_thread_id)
        ]

    def message(self, chat_id: int, message_id: int) -> JSON | None:
        """Any stored message, the users' included."""
        message = self._store.get(chat_id, {}).get(message_id)
        return dict(message) if message is not None else None

    def calls(self, method: str) -> list[JSON]:
        """Params of every call of ``method`` so far."""
        return [params for name, params in self.sent if name == method]

    @property
    def commands(self) -> list[JSON]:
        """Commands for the default scope and no language."""
        return self.commands_for()

    def commands_for(self, scope: JSON | None = None, language_code: str = "") -> list[JSON]:
        return list(self.command_sets.get(_commands_key(scope, language_code), []))

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 5.0,  # noqa: ASYNC109 - a test deadline, not an I/O timeout
    ) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every call or update)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = predicate()
                    if result:
                        return result
                    await self._changed()
        except TimeoutError:
            recent = [name for name, _ in self.sent[-8:]]
            raise TimeoutError(
                f"condition not met within {timeout}s; last calls: {recent}; "
                f"errors: {self.errors[-3:]}"
            ) from None

    async def wait_for_message(
        self,
        chat_id: int,
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        message_thread_id: int | None = None,
        text: str | None = None,
        contains: str | None = None,
        count: int = 1,
    ) -> JSON:
        """Wait until the bot has ``count`` matching messages in the chat; return the newest."""

        def matching() -> list[JSON] | None:
            found = [
                m
                for m in self.messages(chat_id, message_thread_id)
                if (text is None or m.get("text", m.get("caption")) == text)
                and (contains is None or contains in str(m.get("text", m.get("caption", ""))))
            ]
            return found if len(found) >= count else None

        return (await self.wait_for(matching, timeout))[-1]

    async def wait_for_call(
        self,
        method: str,
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        count: int = 1,
    ) -> JSON:
        """Wait until ``method`` was called ``count`` times; return the last call's params."""

        def enough() -> list[JSON] | None:
            calls = self.calls(method)
            return calls if len(calls) >= count else None

        return (await self.wait_for(enough, timeout))[-1]

    # -- internals: notification ----------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _changed(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    # -- internals: HTTP ------------------------------------------------------------------------

    @staticmethod
    def _envelope(error: ApiError) -> web.Response:
        body: JSON = {"ok": False, "error_code": error.code, "description": error.description}
        if error.retry_after is not None:
            body["parameters"] = {"retry_after": error.retry_after}
        return web.json_response(body, status=error.code)

    async def _handle_api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._envelope(ApiError(401, "Unauthorized"))
        entry = self._methods.get(request.match_info["method"].lower())
        if entry is None:
            return self._envelope(ApiError(404, "Not Found"))
        name, handler = entry
        try:
            params = await _read_params(request)
        except ApiError as error:
            return self._envelope(error)
        if name != "getUpdates":
            self.sent.append((name, params))
        if self._outages.get(name.lower(), 0) > 0:
            self._outages[name.lower()] -= 1
            self.errors.append((name, params, 502, "Bad Gateway"))
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        delay = self.latencies.get(name, self.latency if name != "getUpdates" else 0.0)
        counted = name != "getUpdates"
        self.in_flight += counted
        try:
            if counted and self.held is not None:
                self._notify()
                await self.held.wait()
            if delay > 0:
                await asyncio.sleep(delay)
            self._check_flood(name)
            self._check_refusal(name)
            result = await handler(params)
        except ApiError as error:
            self.errors.append((name, params, error.code, error.description))
            return self._envelope(error)
        finally:
            self.in_flight -= counted
            self._notify()
        return web.json_response({"ok": True, "result": result})

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if request.match_info["token"] == self.token:
            for stored in self.files.values():
                if stored.file_path == path:
                    return web.Response(body=stored.data, content_type="application/octet-stream")
        return self._envelope(ApiError(404, "Not Found"))

    def _check_flood(self, name: str) -> None:
        queue = self._floods.get(name.lower())
        if not queue:
            return
        flood = queue[0]
        if flood.after > 0:
            flood.after -= 1
            return
        flood.remaining -= 1
        if flood.remaining <= 0:
            queue.pop(0)
        raise ApiError(
            429, f"Too Many Requests: retry after {flood.retry_after}", flood.retry_after
        )

    def _check_refusal(self, name: str) -> None:
        queue = self._refusals.get(name.lower())
        if not queue:
            return
        refusal = queue[0]
        if refusal.after > 0:
            refusal.after -= 1
            return
        refusal.remaining -= 1
        if refusal.remaining <= 0:
            queue.pop(0)
        raise ApiError(400, refusal.description)

    # -- internals: helpers ---------------------------------------------------------------------

    def _new_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    def _reply_copy(self, chat_id: int, message_id: int) -> JSON:
        """A replied-to message as embedded by Telegram: one level deep."""
        stored = self._store.get(chat_id, {}).get(message_id)
        if stored is None:
            chat = self.chats.get(chat_id, {"id": chat_id, "type": "private"})
            return {"message_id": message_id, "chat": dict(chat), "date": int(time.time())}
        return {k: v for k, v in stored.items() if k != "reply_to_message"}

    def _chat(self, params: JSON) -> JSON:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise bad_request("chat_id is empty")
        if isinstance(chat_id, str):
            for chat in self.chats.values():
                if chat_id.startswith("@") and chat.get("username") == chat_id[1:]:
                    return chat
            raise bad_request("chat not found")
        known = self.chats.get(chat_id)
        if known is None:
            raise bad_request("chat not found")
        return known

    def _format(
        self, params: JSON, key: str, limit: int, *, required: bool
    ) -> tuple[str, list[JSON]]:
        """Apply parse_mode/entities, strip, and check Telegram's emptiness and length rules."""
        raw = params.get(key)
        if raw is None or raw == "":
            if required:
                raise bad_request("message text is empty")
            return "", []
        raw = str(raw)
        entities_key = "entities" if key == "text" else "caption_entities"
        mode = str(params.get("parse_mode") or "").lower()
        if params.get(entities_key):
            text, entities = raw, list(params[entities_key])
        elif mode == "html":
            try:
                text, entities = parse_html(raw, strict_entities=self.strict_html_entities)
            except HtmlParseError as error:
                raise bad_request(f"can't parse entities: {error}") from None
        elif mode in ("", "markdown", "markdownv2"):
            text, entities = raw, []  # Markdown is accepted verbatim, not validated
        else:
            raise bad_request("unsupported parse_mode")
        text, entities = _trim(text, entities)
        if required and not text:
            raise bad_request("message text is empty")
        if utf16_len(text) > limit:
            raise bad_request(
                "message is too long" if key == "text" else "message caption is too long"
            )
        return text, entities

    def _base_message(self, chat: JSON, params: JSON) -> JSON:
        chat_id = int(chat["id"])
        message: JSON = {
            "message_id": self._new_message_id(chat_id),
            "from": dict(self.bot_user),
            "chat": dict(chat),
            "date": int(time.time()),
        }
        thread = params.get("message_thread_id")
        if thread:
            message["message_thread_id"] = thread
            if chat.get("is_forum") or chat["type"] == "private":
                message["is_topic_message"] = True
        reply = params.get("reply_parameters") or {}
        reply_id = reply.get("message_id") or params.get("reply_to_message_id")
        if reply_id:
            if reply_id in self._store.get(chat_id, {}):
                message["reply_to_message"] = self._reply_copy(chat_id, reply_id)
            elif not (
                reply.get("allow_sending_without_reply")
                or params.get("allow_sending_without_reply")
            ):
                raise bad_request("message to be replied not found")
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        return message

    def _stored_message(self, params: JSON, action: str) -> JSON:
        if params.get("inline_message_id"):
            raise bad_request("inline messages are not supported by the fake")
        chat = self._chat(params)
        message = self._store.get(int(chat["id"]), {}).get(params.get("message_id", 0))
        if message is None:
            raise bad_request(f"message to {action} not found")
        return message

    def _file_object(self, stored: StoredFile, *, named: bool = True) -> JSON:
        obj: JSON = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
        }
        if named:
            if stored.file_name:
                obj["file_name"] = stored.file_name
            if stored.mime_type:
                obj["mime_type"] = stored.mime_type
        elif stored.kind == "voice" and stored.mime_type:
            obj["mime_type"] = stored.mime_type
        return obj

    # -- Bot API methods ------------------------------------------------------------------------

    async def _true(self, params: JSON) -> bool:
        return True

    async def _get_me(self, params: JSON) -> JSON:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _delete_webhook(self, params: JSON) -> bool:
        if params.get("drop_pending_updates"):
            self.updates.clear()
        return True

    async def _get_webhook_info(self, params: JSON) -> JSON:
        return {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }

    async def _get_updates(self, params: JSON) -> list[JSON]:
        """Long poll: answer as soon as an update is queued, or after ``timeout`` seconds."""
        self.get_updates_calls += 1
        offset = int(params.get("offset") or 0)
        if offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            self.confirmed_offset = max(self.confirmed_offset, offset)
        elif offset < 0:
            self.updates = self.updates[offset:]
        if "allowed_updates" in params and params["allowed_updates"] is not None:
            self._allowed_updates = set(params["allowed_updates"]) or None
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = max(float(params.get("timeout") or 0), 0.0)
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()  # an older long poll learns it was superseded
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if generation != self._poll_generation:
                raise ApiError(409, _CONFLICT)
            if self._allowed_updates is not None:
                allowed = self._allowed_updates
                self.updates = [u for u in self.updates if _update_type(u) in allowed]
            remaining = deadline - loop.time()
            if self.updates or remaining <= 0 or self._closing:
                return self.updates[:limit]
            try:
                async with asyncio.timeout(remaining):
                    await self._changed()
            except TimeoutError:
                pass

    async def _send_message(self, params: JSON) -> JSON:
        chat = self._chat(params)
        text, entities = self._format(params, "text", MAX_TEXT_LENGTH, required=True)
        message = self._base_message(chat, params)
        message["text"] = text
        if entities:
            message["entities"] = entities
        self._store.setdefault(int(chat["id"]), {})[message["message_id"]] = message
        return message

    async def _edit_message_text(self, params: JSON) -> JSON:
        message = self._stored_message(params, "edit")
        if message["from"]["id"] != self.bot_id:
            raise bad_request("message can't be edited")
        if "text" not in message:
            raise bad_request("there is no text in the message to edit")
        text, entities = self._format(params, "text", MAX_TEXT_LENGTH, required=True)
        markup = params.get("reply_markup")
        markup = markup if isinstance(markup, dict) and "inline_keyboard" in markup else None
        if (
            text == message["text"]
            and entities == message.get("entities", [])
            and markup == message.get("reply_markup")
        ):
            raise bad_request(_NOT_MODIFIED[len("Bad Request: ") :])
        message["text"] = text
        message.pop("entities", None)
        message.pop("reply_markup", None)
        if entities:
            message["entities"] = entities
        if markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return message

    async def _delete_message(self, params: JSON) -> bool:
        message = self._stored_message(params, "delete")
        del self._store[int(message["chat"]["id"])][message["message_id"]]
        return True

    async def _send_message_draft(self, params: JSON) -> bool:
        chat = self._chat(params)
        if chat["type"] != "private" or self.refuse_drafts:
            raise bad_request("TEXTDRAFT_PEER_INVALID")
        if not params.get("draft_id"):
            raise bad_request("draft_id must be non-zero")
        text, entities = self._format(params, "text", MAX_TEXT_LENGTH, required=False)
        self.drafts.append(
            {
                "chat_id": chat["id"],
                "draft_id": params["draft_id"],
                "text": text,
                "entities": entities,
                "raw_text": params.get("text"),
                "parse_mode": params.get("parse_mode"),
                "message_thread_id": params.get("message_thread_id"),
            }
        )
        return True

    async def _send_chat_action(self, params: JSON) -> bool:
        chat = self._chat(params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        self.actions.append(
            {
                "chat_id": chat["id"],
                "action": params["action"],
                "message_thread_id": params.get("message_thread_id"),
            }
        )
        return True

    async def _set_my_commands(self, params: JSON) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands must be an array of at most 100 BotCommand")
        for command in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", str(command.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        key = _commands_key(params.get("scope"), params.get("language_code") or "")
        self.command_sets[key] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    async def _get_my_commands(self, params: JSON) -> list[JSON]:
        return self.commands_for(params.get("scope"), params.get("language_code") or "")

    async def _delete_my_commands(self, params: JSON) -> bool:
        key = _commands_key(params.get("scope"), params.get("language_code") or "")
        self.command_sets.pop(key, None)
        return True

    async def _send_document(self, params: JSON) -> JSON:
        chat = self._chat(params)
        document = params.get("document")
        if isinstance(document, Upload):
            if not document.data:
                raise bad_request("file must be non-empty")
            stored = self.store_file(
                document.data,
                "documents",
                file_name=document.filename,
                mime_type=document.mime_type,
            )
        elif isinstance(document, str) and document in self.files:
            stored = self.files[document]
        elif document:
            raise bad_request("wrong file identifier/HTTP URL specified")
        else:
            raise bad_request("there is no document in the request")
        caption, caption_entities = self._format(
            params, "caption", MAX_CAPTION_LENGTH, required=False
        )
        message = self._base_message(chat, params)
        message["document"] = self._file_object(stored)
        if caption:
            message["caption"] = caption
        if caption_entities:
            message["caption_entities"] = caption_entities
        self._store.setdefault(int(chat["id"]), {})[message["message_id"]] = message
        self.documents.append(
            {
                "chat_id": chat["id"],
                "message_id": message["message_id"],
                "file_id": stored.file_id,
                "file_name": stored.file_name,
                "mime_type": stored.mime_type,
                "data": stored.data,
                "caption": caption or None,
                "message_thread_id": params.get("message_thread_id"),
            }
        )
        return message

    async def _get_file(self, params: JSON) -> JSON:
        stored = self.files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise bad_request("invalid file_id")
        if len(stored.data) > MAX_DOWNLOAD_BYTES:  # the Bot API's download limit
            raise bad_request("file is too big")
        if stored.file_path is None:
            suffix = ""
            if stored.file_name and "." in stored.file_name:
                suffix = "." + stored.file_name.rsplit(".", 1)[1]
            elif stored.mime_type:
                suffix = mimetypes.guess_extension(stored.mime_type) or ""
            stored.file_path = f"{stored.kind}/file_{stored.file_unique_id}{suffix}"
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    async def _answer_callback_query(self, params: JSON) -> bool:
        if not params.get("callback_query_id"):
            raise bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        self.callback_answers.append(params)
        return True


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _commands_key(scope: JSON | None, language_code: str) -> tuple[str, str]:
    return json.dumps(scope or {"type": "default"}, sort_keys=True), language_code


def _update_type(update: JSON) -> str:
    return next((key for key in update if key != "update_id"), "")


def _coerce(name: str, value: Any) -> Any:
    """Type a parameter as Telegram does: form values are strings, JSON ones may be too."""
    if not isinstance(value, str):
        return value
    try:
        if name == "chat_id":
            return int(value) if re.fullmatch(r"-?\d+", value) else value
        if name in _INT_PARAMS:
            return int(value)
        if name in _FLOAT_PARAMS:
            return float(value)
        if name in _BOOL_PARAMS:
            return value.lower() in ("true", "1")
        if name in _JSON_PARAMS:
            return json.loads(value)
    except ValueError:
        raise bad_request(f"invalid {name} specified") from None
    return value


async def _read_params(request: web.Request) -> JSON:
    """Merge query string and body (JSON, urlencoded or multipart) into typed params."""
    raw: JSON = dict(request.query)
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("can't parse JSON object") from None
        if not isinstance(body, dict):
            raise bad_request("can't parse JSON object")
        raw.update(body)
    elif request.can_read_body:
        form = await request.post()
        uploads: dict[str, Upload] = {}
        for key, value in form.items():
            if isinstance(value, web.FileField):
                uploads[key] = Upload(
                    filename=value.filename,
                    data=value.file.read(),
                    mime_type=value.content_type or "application/octet-stream",
                )
            else:
                raw[key] = value
        raw.update(uploads)
        for key, value in list(raw.items()):  # resolve attach://<name> references
            if isinstance(value, str) and value.startswith("attach://"):
                raw[key] = uploads.get(value[len("attach://") :], value)
    return {key: _coerce(key, value) for key, value in raw.items()}
