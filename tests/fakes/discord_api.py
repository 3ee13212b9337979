"""An in-process fake of Discord (REST API + gateway WebSocket) for tests.

It speaks the real wire protocol - JSON bodies and error envelopes, multipart uploads,
rate-limit headers, gateway opcodes, zlib-stream transport compression, sequence numbers and
RESUME replay - so the *real* ``discord.py`` client can log in, connect and run against it.
Tests then exercise discord.py's own parsing, caching, retry and reconnect code instead of a
mock of it, and can drive the bot as users would (messages, slash commands, disconnects).

discord.py has no base-URL option (``proxy=`` tunnels HTTPS, so it cannot redirect to a plain
HTTP server), so :meth:`FakeDiscord.patch_discord` swaps the two class attributes all of its
URLs derive from - ``discord.http.Route.BASE`` (REST, webhooks, interaction callbacks) and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (the plain ``Client`` never asks
``/gateway/bot``) - and restores them on exit. Attachment URLs handed out point at this
server, so ``Attachment.read()`` works unchanged.

Usage::

    async with FakeDiscord(token="fake-token") as dc:
        dc.add_guild(1, "Guild", channels=["general"])
        with dc.patch_discord():
            task = asyncio.create_task(client.start("fake-token"))
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import mimetypes
import re
import secrets
import socket
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from aiohttp.typedefs import Handler
from PIL import Image, UnidentifiedImageError

JSON = dict[str, Any]
T = TypeVar("T")
Upload = tuple[str, bytes, str | None]  # (filename, data, content type) as a user attaches it

DISCORD_EPOCH_MS = 1_420_070_400_000
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_FILES = 10

# Gateway opcodes.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE = 0, 1, 2, 3, 4
OP_RESUME, OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION = 6, 7, 8, 9
OP_HELLO, OP_HEARTBEAT_ACK = 10, 11

# Gateway intents that change what the fake dispatches.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Message flags.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

# Message types.
MSG_DEFAULT, MSG_REPLY, MSG_CHAT_INPUT_COMMAND = 0, 19, 20

# Channel types.
CH_TEXT, CH_DM, CH_PUBLIC_THREAD, CH_PRIVATE_THREAD = 0, 1, 11, 12

# Permissions: what a freshly invited bot and @everyone typically have.
_P_ADD_REACTIONS = 1 << 6
_P_VIEW_CHANNEL = 1 << 10
_P_SEND_MESSAGES = 1 << 11
_P_EMBED_LINKS = 1 << 14
_P_ATTACH_FILES = 1 << 15
_P_READ_HISTORY = 1 << 16
_P_USE_APP_COMMANDS = 1 << 31
_P_CREATE_PUBLIC_THREADS = 1 << 35
_P_SEND_IN_THREADS = 1 << 38
EVERYONE_PERMISSIONS = (
    _P_ADD_REACTIONS
    | _P_VIEW_CHANNEL
    | _P_SEND_MESSAGES
    | _P_READ_HISTORY
    | _P_USE_APP_COMMANDS
    | _P_SEND_IN_THREADS
)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | _P_EMBED_LINKS | _P_ATTACH_FILES | _P_CREATE_PUBLIC_THREADS

# Application flags: the "limited" privileged-intent toggles of an unverified bot.
_APP_FLAGS_PRIVILEGED = (1 << 13) | (1 << 15) | (1 << 19)

# Close codes after which Discord will not let the session be resumed.
_INVALIDATING_CLOSE_CODES = frozenset({4007, 4009})

_BODY = web.RequestKey("body", object)
_UPLOADS = web.RequestKey("uploads", list[tuple[int, str, bytes]])

_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


# --------------------------------------------------------------------------- errors


class DiscordError(Exception):
    """An error answered with Discord's JSON error envelope ``{"message", "code"[, "errors"]}``."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def response(self) -> web.Response:
        body: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return _json_response(body, status=self.status)


def _unknown(what: str, code: int) -> DiscordError:
    return DiscordError(404, code, f"Unknown {what}")


def _form_error(path: Sequence[str], code: str, message: str) -> DiscordError:
    """A 50035 Invalid Form Body with the error nested under ``path`` as Discord nests it."""
    errors: JSON = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        errors = {key: errors}
    return DiscordError(400, 50035, "Invalid Form Body", errors)


UNAUTHORIZED = DiscordError(401, 0, "401: Unauthorized")
EMPTY_MESSAGE = DiscordError(400, 50006, "Cannot send an empty message")
ALREADY_ACKNOWLEDGED = DiscordError(400, 40060, "Interaction has already been acknowledged.")
MISSING_ACCESS = DiscordError(403, 50001, "Missing Access")
NOT_AUTHOR = DiscordError(403, 50005, "Cannot edit a message authored by another user")
TOO_LARGE = DiscordError(413, 40005, "Request entity too large")


# --------------------------------------------------------------------------- records


class RestCall(NamedTuple):
    """One REST request as received: path is relative to ``/api/v10`` and has no query."""

    method: str
    path: str
    json: Any


class GatewayEvent(NamedTuple):
    """One dispatch (op 0) sent, or buffered for RESUME, to the bot."""

    name: str
    data: JSON


@dataclass
class FakeAttachment:
    """An uploaded file; ``data`` is served back at ``url`` like Discord's CDN."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None
    size: tuple[int, int] | None = None  # an image's pixels, as Discord reports them

    def payload(self, *, ephemeral: bool = False) -> JSON:
        out: JSON = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.size is not None:
            out["width"], out["height"] = self.size
        if self.description is not None:
            out["description"] = self.description
        if ephemeral:
            out["ephemeral"] = True
        return out


@dataclass
class FakeMessage:
    """A message as Discord stores it; :meth:`payload` renders the wire object."""

    id: int
    channel_id: int
    guild_id: int | None
    author: JSON
    content: str
    timestamp: str
    attachments: list[FakeAttachment] = field(default_factory=list)
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    mentions: list[JSON] = field(default_factory=list)
    flags: int = 0
    type: int = MSG_DEFAULT
    tts: bool = False
    nonce: str | None = None
    edited_timestamp: str | None = None
    reference: JSON | None = None
    referenced: FakeMessage | None = None
    member: JSON | None = None
    webhook_id: int | None = None
    interaction: JSON | None = None
    history: list[str] = field(default_factory=list)  # earlier contents, oldest first
    deleted: bool = False
    reactions: list[str] = field(default_factory=list)

    @property
    def author_id(self) -> int:
        return int(self.author["id"])

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    def payload(self, *, nested: bool = False) -> JSON:
        out: JSON = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": self.mentions,
            "mention_roles": [],
            "attachments": [a.payload(ephemeral=self.ephemeral) for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            out["guild_id"] = str(self.guild_id)
        if self.member is not None:
            out["member"] = self.member
        if self.nonce is not None:
            out["nonce"] = self.nonce
        if self.reactions:
            counts: dict[str, int] = {}
            for emoji in self.reactions:
                counts[emoji] = counts.get(emoji, 0) + 1
            out["reactions"] = [
                {"emoji": {"id": None, "name": e}, "count": n, "me": True}
                for e, n in counts.items()
            ]
        if self.webhook_id is not None:
            out["webhook_id"] = str(self.webhook_id)
            out["application_id"] = str(self.webhook_id)
        if self.interaction is not None:
            out["interaction_metadata"] = self.interaction
        if self.reference is not None:
            out["message_reference"] = self.reference
            if not nested:
                ref = self.referenced
                out["referenced_message"] = None if ref is None else ref.payload(nested=True)
        return out


@dataclass
class FakeInteraction:
    """An interaction dispatched to the bot and everything the bot did in answer to it.

    Times are ``time.monotonic()`` values; ``log`` holds ``(seconds since dispatch, action)``.
    """

    id: int
    token: str
    name: str
    channel_id: int
    guild_id: int | None
    user_id: int
    payload: JSON
    dispatched_at: float
    callback_type: int | None = None
    callback_data: JSON | None = None
    acked_at: float | None = None
    ephemeral: bool = False
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    original_edits: list[JSON] = field(default_factory=list)
    late_callbacks: list[float] = field(default_factory=list)  # rejected: past the deadline
    log: list[tuple[float, str]] = field(default_factory=list)
    message_id: int | None = None  # a component interaction: the message of the button

    @property
    def ack_delay(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.dispatched_at

    @property
    def deferred(self) -> bool:
        return self.callback_type == 5

    def note(self, action: str) -> None:
        self.log.append((time.monotonic() - self.dispatched_at, action))


@dataclass
class FakeGuild:
    """A guild the bot is in; payloads are kept in wire form so they can be sent as they are."""

    id: int
    name: str
    owner_id: int
    joined_at: str
    channels: dict[int, JSON] = field(default_factory=dict)
    threads: dict[int, JSON] = field(default_factory=dict)
    roles: dict[int, JSON] = field(default_factory=dict)
    members: dict[int, JSON] = field(default_factory=dict)  # user id -> member with "user"

    def channel_id(self, name: str) -> int:
        """The id of the text channel or thread called ``name``."""
        for cid, ch in (*self.channels.items(), *self.threads.items()):
            if ch["name"] == name:
                return cid
        raise KeyError(name)

    def permissions_of(self, user_id: int) -> int:
        member = self.members.get(user_id)
        perms = int(self.roles[self.id]["permissions"])
        for rid in member["roles"] if member else []:
            perms |= int(self.roles[int(rid)]["permissions"])
        return perms

    def payload(self) -> JSON:
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "features": [],
            "roles": list(self.roles.values()),
            "emojis": [],
            "stickers": [],
            "channels": [
                {k: v for k, v in c.items() if k != "guild_id"} for c in self.channels.values()
            ],
            "threads": list(self.threads.values()),
            "members": list(self.members.values()),
            "member_count": len(self.members),
            "large": False,
            "unavailable": False,
            "joined_at": self.joined_at,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "afk_timeout": 300,
            "afk_channel_id": None,
            "system_channel_id": None,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "application_id": None,
        }


@dataclass
class _RateRule:
    pattern: str
    times: int
    retry_after: float
    is_global: bool
    cloudflare: bool = False


@dataclass
class _Failure:
    pattern: str
    times: int
    error: DiscordError


@dataclass
class _Session:
    """A gateway session: survives disconnects so a RESUME can replay what was missed."""

    id: str
    intents: int
    shard: tuple[int, int] | None
    seq: int = 0
    buffer: list[tuple[int, str]] = field(default_factory=list)
    conn: _Connection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def handles(self, guild_id: int | None) -> bool:
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return (0 if guild_id is None else (guild_id >> 22) % count) == shard_id


class _Connection:
    """One WebSocket; all frames go through ONE zlib stream, as Discord's zlib-stream does."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, compress: bool) -> None:
        self.ws = ws
        self.request = request
        self.session: _Session | None = None
        self.closed_by_server = False
        self._zlib = zlib.compressobj() if compress else None
        self._lock = asyncio.Lock()  # frames must hit the wire in compression order

    async def send(self, payload: JSON | str) -> None:
        text = payload if isinstance(payload, str) else _dumps(payload)
        async with self._lock:
            if self.ws.closed:
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                if self._zlib is None:
                    await self.ws.send_str(text)
                else:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)

    async def close(self, code: int, message: str = "") -> None:
        self.closed_by_server = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=message.encode())

    def abort(self) -> None:
        """Cut the TCP connection without a close frame, like a network failure."""
        self.closed_by_server = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _json_response(obj: Any, status: int = 200) -> web.Response:
    """JSON with a bare ``application/json`` type: discord.py compares the header exactly and
    treats ``application/json; charset=utf-8`` (aiohttp's default) as plain text."""
    return web.Response(body=_dumps(obj).encode(), status=status, content_type="application/json")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


# --------------------------------------------------------------------------- the fake


class FakeDiscord:
    """A fake Discord on ``127.0.0.1:<free port>``: REST at ``/api/v10``, gateway at ``/gateway``.

    Everything the bot does is recorded for assertions (``sent``, ``messages``, ``typing``,
    ``commands``, interactions, ``events``) and every change wakes :meth:`wait_for`.
    """

    def __init__(
        self,
        token: str = "fake-token",
        *,
        bot_id: int = 1_234_567_890_123_456_789,
        application_id: int | None = None,
        username: str = "palaver",
        heartbeat_interval_ms: int = 41_250,
        interaction_deadline: float = 3.0,
        latency: float = 0.0,
        max_upload_bytes: int = 10 * 1024 * 1024,
        privileged_intents: bool = True,
    ) -> None:
        self.token = token
        self.bot_id = bot_id
        self.application_id = application_id if application_id is not None else bot_id
        self.username = username
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.interaction_deadline = interaction_deadline
        self.latency = latency  # added to every REST response, to expose ordering races
        self.max_upload_bytes = max_upload_bytes
        self.privileged_intents = privileged_intents  # the developer-portal toggles

        self.sent: list[RestCall] = []
        self.unhandled: list[RestCall] = []  # calls to endpoints the fake does not implement
        self.events: list[GatewayEvent] = []
        self.received: list[JSON] = []  # gateway payloads from the bot (tokens redacted)
        self.gateway_connects: list[str] = []  # path + query: which URL, compression, encoding
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.downloads: list[int] = []  # attachment ids fetched from the CDN, in order
        self.typing: list[tuple[int, float]] = []  # (channel id, monotonic time)
        self.commands: dict[int | None, list[JSON]] = {None: []}  # guild id (None: global)
        self.interactions: dict[int, FakeInteraction] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.users: dict[int, JSON] = {}
        self.dm_channels: dict[int, int] = {}  # DM channel id -> recipient user id
        self.identify_count = 0
        self.resume_count = 0
        self.invalid_session_count = 0
        self.heartbeat_count = 0

        self._sessions: dict[str, _Session] = {}
        self._connections: set[_Connection] = set()
        self._rate_rules: list[_RateRule] = []
        self._failures: list[_Failure] = []
        self.errors: list[BaseException] = []  # bugs in the fake itself, answered with 400
        self._gate = asyncio.Event()
        self._gate.set()
        self._cond = asyncio.Condition()
        self._last_snowflake = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.bot_user: JSON = self._user_payload(bot_id, username, bot=True)
        self.users[bot_id] = self.bot_user

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._gate.set()
        await asyncio.gather(*(c.close(1001) for c in list(self._connections)))
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway/resume"

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[None]:
        """Point discord.py at this fake (process-wide) until exit; see the module docstring."""
        from discord.gateway import DiscordWebSocket
        from discord.http import Route

        old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
        Route.BASE = self.api_base
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway

    # ------------------------------------------------------------------ ids and users

    def snowflake(self) -> int:
        """A fresh, increasing snowflake whose timestamp is now (discord.py derives dates)."""
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22 | 1 << 17
        self._last_snowflake = max(now, self._last_snowflake + 1)
        return self._last_snowflake

    @staticmethod
    def _user_payload(user_id: int, username: str, *, bot: bool = False) -> JSON:
        return {
            "id": str(user_id),
            "username": username,
            "discriminator": "0",
            "global_name": None if bot else username,
            "avatar": None,
            "bot": bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }

    def add_user(self, user_id: int, username: str) -> JSON:
        """Register (or rename) a human user and return its payload."""
        user = self._user_payload(user_id, username)
        self.users[user_id] = user
        return user

    def _member_payload(self, guild: FakeGuild, user_id: int, roles: Sequence[int] = ()) -> JSON:
        member = {
            "user": self.users[user_id],
            "nick": None,
            "avatar": None,
            "roles": [str(r) for r in roles],
            "joined_at": guild.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        guild.members[user_id] = member
        return member

    def _ensure_member(self, guild: FakeGuild, user_id: int) -> JSON:
        return guild.members.get(user_id) or self._member_payload(guild, user_id)

    # ------------------------------------------------------------------ world building

    def add_guild(
        self,
        guild_id: int,
        name: str = "Test Guild",
        *,
        channels: Iterable[int | str | tuple[int, str]] = ("general",),
        roles: Iterable[int | str | tuple[int, str]] = (),
        members: Iterable[int | tuple[int, str]] = (),
        owner_id: int | None = None,
    ) -> FakeGuild:
        """Make the bot a member of a guild; sent in GUILD_CREATE when the bot identifies.

        Channels and roles are ids, names or ``(id, name)``; members are ids or ``(id, name)``.
        After the bot is connected, follow with :meth:`dispatch_guild_create`.
        """
        guild = FakeGuild(guild_id, name, owner_id or 0, _iso(time.time()))
        guild.roles[guild_id] = self._role(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
        bot_role = self.snowflake()
        guild.roles[bot_role] = self._role(bot_role, self.username, BOT_PERMISSIONS, 1)
        guild.roles[bot_role]["managed"] = True
        guild.roles[bot_role]["tags"] = {"bot_id": str(self.bot_id)}
        for position, spec in enumerate(roles, start=2):
            rid, rname = self._id_and_name(spec, "role")
            guild.roles[rid] = self._role(rid, rname, 0, position)
        for position, spec in enumerate(channels):
            cid, cname = self._id_and_name(spec, "channel")
            guild.channels[cid] = {
                "id": str(cid),
                "guild_id": str(guild_id),
                "type": CH_TEXT,
                "name": cname,
                "position": position,
                "permission_overwrites": [],
                "parent_id": None,
                "nsfw": False,
                "topic": None,
                "last_message_id": None,
                "rate_limit_per_user": 0,
                "flags": 0,
            }
        self._member_payload(guild, self.bot_id, [bot_role])
        for spec in members:
            uid, uname = (spec, f"user{spec}") if isinstance(spec, int) else spec
            self.users.setdefault(uid, self._user_payload(uid, uname))
            self._member_payload(guild, uid)
        if not guild.owner_id:
            guild.owner_id = next((u for u in guild.members if u != self.bot_id), self.bot_id)
        self.guilds[guild_id] = guild
        return guild

    def _id_and_name(self, spec: int | str | tuple[int, str], kind: str) -> tuple[int, str]:
        if isinstance(spec, tuple):
            return spec
        if isinstance(spec, int):
            return spec, f"{kind}-{spec}"
        return self.snowflake(), spec

    @staticmethod
    def _role(role_id: int, name: str, permissions: int, position: int) -> JSON:
        return {
            "id": str(role_id),
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }

    def add_thread(
        self,
        thread_id: int,
        parent_id: int,
        name: str = "thread",
        *,
        owner_id: int | None = None,
        private: bool = False,
        archived: bool = False,
    ) -> JSON:
        """Add a thread under a text channel; once connected, :meth:`dispatch_thread_create`."""
        guild = self._guild_of_channel(parent_id)
        if guild is None:
            raise KeyError(f"channel {parent_id} is not in any guild")
        thread = {
            "id": str(thread_id),
            "guild_id": str(guild.id),
            "parent_id": str(parent_id),
            "owner_id": str(owner_id or self.bot_id),
            "name": name,
            "type": CH_PRIVATE_THREAD if private else CH_PUBLIC_THREAD,
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": archived,
                "auto_archive_duration": 1440,
                "archive_timestamp": _iso(time.time()),
                "locked": False,
                "invitable": not private,
            },
        }
        guild.threads[thread_id] = thread
        return thread

    def _guild_of_channel(self, channel_id: int) -> FakeGuild | None:
        for guild in self.guilds.values():
            if channel_id in guild.channels or channel_id in guild.threads:
                return guild
        return None

    def _channel_payload(self, channel_id: int) -> JSON:
        guild = self._guild_of_channel(channel_id)
        if guild is not None:
            return guild.channels.get(channel_id) or guild.threads[channel_id]
        if channel_id in self.dm_channels:
            return {
                "id": str(channel_id),
                "type": CH_DM,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self.users[self.dm_channels[channel_id]]],
            }
        raise _unknown("Channel", 10003)

    def dm_channel(self, user_id: int) -> int:
        """The id of the bot's DM channel with a user, created on first use."""
        for cid, uid in self.dm_channels.items():
            if uid == user_id:
                return cid
        if user_id not in self.users:
            self.add_user(user_id, f"user{user_id}")
        cid = self.snowflake()
        self.dm_channels[cid] = user_id
        return cid

    # ------------------------------------------------------------------ test controls

    def rate_limit(
        self,
        route: str,
        times: int = 1,
        retry_after: float = 0.2,
        *,
        is_global: bool = False,
        cloudflare: bool = False,
    ) -> None:
        """Answer the next ``times`` calls whose ``"METHOD /path"`` contains ``route`` with 429.
        ``cloudflare``: the 429 of a Cloudflare ban (no ``Via`` header), which discord.py
        does not wait out but raises at once as an HTTPException."""
        self._rate_rules.append(_RateRule(route, times, retry_after, is_global, cloudflare))

    def fail(
        self,
        route: str,
        status: int = 500,
        code: int = 0,
        message: str = "Internal Server Error",
        *,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching calls with an error, e.g. 403/50013 Missing
        Permissions; attachment downloads ("GET /attachments/") match too. discord.py
        retries 500/502/504 of the API itself (sleeping 1 s, 3 s, ...)."""
        self._failures.append(_Failure(route, times, DiscordError(status, code, message)))

    async def delete_message(self, message_id: int) -> None:
        """A user deletes a message (MESSAGE_DELETE); replies may no longer reference it."""
        await self._delete(self.messages[message_id])

    def hold_gateway(self) -> None:
        """Accept new gateway connections but withhold HELLO until :meth:`release_gateway`."""
        self._gate.clear()

    def release_gateway(self) -> None:
        self._gate.set()

    async def disconnect_gateway(self, code: int = 4000, *, hold: bool = False) -> None:
        """Close the bot's gateway connections with ``code`` (4000: resumable)."""
        if hold:
            self.hold_gateway()
        for conn in await self._detach_all(invalidate=code in _INVALIDATING_CLOSE_CODES):
            await conn.close(code, "Disconnected by FakeDiscord")

    async def drop_connection(self, *, hold: bool = False) -> None:
        """Cut the gateway TCP connections without a close frame (a network failure)."""
        if hold:
            self.hold_gateway()
        for conn in await self._detach_all(invalidate=False):
            conn.abort()

    async def _detach_all(self, *, invalidate: bool) -> list[_Connection]:
        conns = list(self._connections)
        for conn in conns:
            session = conn.session
            if session is not None:
                async with session.lock:  # later dispatches are buffered for the RESUME replay
                    if session.conn is conn:
                        session.conn = None
                if invalidate:
                    self._sessions.pop(session.id, None)
        return conns

    async def invalidate_session(self, resumable: bool = False) -> None:
        """Send op 9 (INVALID_SESSION) everywhere; the sessions are forgotten unless resumable."""
        for conn in list(self._connections):
            if conn.session is not None and not resumable:
                self._sessions.pop(conn.session.id, None)
            self.invalid_session_count += 1
            await conn.send({"op": OP_INVALID_SESSION, "d": resumable, "s": None, "t": None})

    async def request_reconnect(self) -> None:
        """Send op 7 (RECONNECT): the bot should reconnect and RESUME."""
        for conn in list(self._connections):
            await conn.send({"op": OP_RECONNECT, "d": None, "s": None, "t": None})

    @property
    def connected(self) -> bool:
        """Whether some identified session currently has a live connection."""
        return any(s.conn is not None for s in self._sessions.values())

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Wait until ``predicate()`` is truthy (re-checked on every REST call and dispatch)."""
        async with self._cond:
            return await asyncio.wait_for(self._cond.wait_for(predicate), timeout)

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ inspection

    def channel_messages(
        self, channel_id: int, *, include_users: bool = False
    ) -> list[FakeMessage]:
        """Live, non-ephemeral messages in a channel, oldest first (bot's only by default)."""
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id
            and not m.deleted
            and not m.ephemeral
            and (include_users or m.author_id == self.bot_id)
        ]

    def interaction_responses(self, interaction_id: int | str) -> FakeInteraction:
        return self.interactions[int(interaction_id)]

    # ------------------------------------------------------------------ driving as users

    async def dispatch_event(self, name: str, data: JSON, *, guild_id: int | None = None) -> None:
        """Send an arbitrary dispatch to the sessions serving ``guild_id`` (escape hatch)."""
        await self._dispatch(name, data, guild_id=guild_id)

    async def dispatch_guild_create(self, guild_id: int) -> None:
        await self._dispatch("GUILD_CREATE", self.guilds[guild_id].payload(), guild_id=guild_id)

    async def dispatch_thread_create(self, thread_id: int, *, newly_created: bool = True) -> None:
        guild = self._guild_of_channel(thread_id)
        assert guild is not None
        data = {**guild.threads[thread_id], "newly_created": newly_created}
        await self._dispatch("THREAD_CREATE", data, guild_id=guild.id)

    def _require_session(self) -> None:
        if not self._sessions:
            raise RuntimeError("no gateway session: the bot has not identified (or closed)")

    def _resolve_place(
        self, channel_id: int | None, guild_id: int | None, author_id: int
    ) -> tuple[int, FakeGuild | None]:
        if channel_id is None:
            if guild_id is not None:
                raise ValueError("a guild message needs a channel_id")
            return self.dm_channel(author_id), None
        guild = self._guild_of_channel(channel_id)
        if guild is None:
            if guild_id is not None:
                raise KeyError(f"channel {channel_id} is not in guild {guild_id}")
            self.dm_channels.setdefault(channel_id, author_id)
            return channel_id, None
        if guild_id is not None and guild.id != guild_id:
            raise KeyError(f"channel {channel_id} is not in guild {guild_id}")
        return channel_id, guild

    async def user_message(
        self,
        channel_id: int | None,
        content: str,
        *,
        author_id: int = 111_111_111_111_111_111,
        username: str = "alice",
        guild_id: int | None = None,
        mentions_bot: bool = False,
        reply_to: int | None = None,
        attachments: Sequence[Upload] | None = None,
        message_id: int | None = None,
        embeds: Sequence[JSON] = (),
    ) -> JSON:
        """Dispatch MESSAGE_CREATE from a human; ``channel_id=None`` means their DM with the bot.

        ``mentions_bot`` prefixes ``<@bot>`` like a client would; replying to a bot message
        also puts the bot in ``mentions`` (Discord's default reply ping).
        """
        self._require_session()
        if author_id not in self.users or self.users[author_id]["username"] != username:
            self.add_user(author_id, username)
        channel_id, guild = self._resolve_place(channel_id, guild_id, author_id)
        mentions: list[JSON] = []
        if mentions_bot:
            tag = f"<@{self.bot_id}>"
            if tag not in content and f"<@!{self.bot_id}>" not in content:
                content = f"{tag} {content}"
        if mentions_bot or f"<@{self.bot_id}>" in content:
            mentions.append(self.bot_user)
        referenced = None
        reference = None
        if reply_to is not None:
            referenced = self.messages.get(reply_to)
            if referenced is None:
                raise KeyError(f"no message {reply_to} to reply to")
            reference = self._reference(referenced)
            if referenced.author_id == self.bot_id and self.bot_user not in mentions:
                mentions.append(self.bot_user)
        msg_id = message_id if message_id is not None else self.snowflake()
        files = [
            self._store_attachment(channel_id, up[0], up[1], up[2] if len(up) > 2 else None)
            for up in attachments or ()
        ]
        msg = FakeMessage(
            id=msg_id,
            channel_id=channel_id,
            guild_id=guild.id if guild else None,
            author=self.users[author_id],
            content=content,
            timestamp=_iso(time.time()),
            attachments=files,
            embeds=list(embeds),
            type=MSG_REPLY if reference else MSG_DEFAULT,
            reference=reference,
            referenced=referenced,
        )
        if guild is not None:
            member = self._ensure_member(guild, author_id)
            msg.member = {k: v for k, v in member.items() if k != "user"}
            msg.mentions = [self._mention(guild, u) for u in mentions]
        else:
            msg.mentions = mentions
        self.messages[msg.id] = msg
        await self._dispatch_message("MESSAGE_CREATE", msg)
        return msg.payload()

    def _mention(self, guild: FakeGuild, user: JSON) -> JSON:
        member = self._ensure_member(guild, int(user["id"]))
        return {**user, "member": {k: v for k, v in member.items() if k != "user"}}

    @staticmethod
    def _reference(msg: FakeMessage) -> JSON:
        ref: JSON = {"type": 0, "message_id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id is not None:
            ref["guild_id"] = str(msg.guild_id)
        return ref

    def _store_attachment(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        description: str | None = None,
    ) -> FakeAttachment:
        aid = self.snowflake()
        ctype = content_type or mimetypes.guess_type(filename)[0]
        url = f"{self.url}/attachments/{channel_id}/{aid}/{quote(filename)}"
        att = FakeAttachment(aid, filename, data, ctype, url, description, _image_size(data))
        self.attachments[aid] = att
        return att

    async def slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        channel_id: int | None = None,
        author_id: int = 111_111_111_111_111_111,
        username: str = "alice",
        guild_id: int | None = None,
        locale: str = "en-US",
    ) -> JSON:
        """Dispatch INTERACTION_CREATE for a registered chat-input command; returns the payload.

        ``options`` maps option names to values; a sub-command's value is a mapping of its own
        options. User/channel/role options take ids, attachment options an ``Upload`` tuple.
        """
        self._require_session()
        if author_id not in self.users or self.users[author_id]["username"] != username:
            self.add_user(author_id, username)
        channel_id, guild = self._resolve_place(channel_id, guild_id, author_id)
        command = self._find_command(name, guild)
        resolved: JSON = {}
        data: JSON = {
            "id": command["id"],
            "name": name,
            "type": 1,
            "options": self._build_options(
                command.get("options", []), options or {}, resolved, guild, channel_id
            ),
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        iid = self.snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        user = self.users[author_id]
        payload: JSON = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": 2,
            "data": data,
            "channel_id": str(channel_id),
            "channel": self._channel_payload(channel_id),
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "attachment_size_limit": self.max_upload_bytes,
        }
        if guild is not None:
            member = dict(self._ensure_member(guild, author_id))
            member["permissions"] = str(guild.permissions_of(author_id))
            payload["channel"] = {**payload["channel"], "permissions": member["permissions"]}
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=member,
                app_permissions=str(guild.permissions_of(self.bot_id)),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
        else:
            payload.update(
                user=user,
                app_permissions=str(BOT_PERMISSIONS),
                authorizing_integration_owners={"0": "0"},
                context=1,
            )
        self.interactions[iid] = FakeInteraction(
            id=iid,
            token=token,
            name=name,
            channel_id=channel_id,
            guild_id=guild.id if guild else None,
            user_id=author_id,
            payload=payload,
            dispatched_at=time.monotonic(),
        )
        await self._dispatch("INTERACTION_CREATE", payload, guild_id=guild.id if guild else None)
        return payload

    async def press_button(
        self, message_id: int, custom_id: str, *, author_id: int, username: str = "alice"
    ) -> JSON:
        """A user presses a button of a bot message: INTERACTION_CREATE of type 3
        (MESSAGE_COMPONENT). Discord refuses a custom_id the message does not have."""
        self._require_session()
        msg = self.messages[message_id]
        ids = {
            c.get("custom_id")
            for row in msg.components
            for c in row.get("components", [])
            if c.get("type") == 2
        }
        if custom_id not in ids:
            raise ValueError(f"message {message_id} has no button {custom_id!r}")
        if author_id not in self.users or self.users[author_id]["username"] != username:
            self.add_user(author_id, username)
        guild = self.guilds.get(msg.guild_id) if msg.guild_id is not None else None
        iid = self.snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        payload: JSON = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": 3,
            "data": {"custom_id": custom_id, "component_type": 2},
            "message": msg.payload(),
            "channel_id": str(msg.channel_id),
            "channel": self._channel_payload(msg.channel_id),
            "token": token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": self.max_upload_bytes,
        }
        if guild is not None:
            member = dict(self._ensure_member(guild, author_id))
            member["permissions"] = str(guild.permissions_of(author_id))
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=member,
                app_permissions=str(guild.permissions_of(self.bot_id)),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
        else:
            payload.update(
                user=self.users[author_id],
                app_permissions=str(BOT_PERMISSIONS),
                authorizing_integration_owners={"0": "0"},
                context=1,
            )
        self.interactions[iid] = FakeInteraction(
            id=iid,
            token=token,
            name=custom_id,
            channel_id=msg.channel_id,
            guild_id=msg.guild_id,
            user_id=author_id,
            payload=payload,
            dispatched_at=time.monotonic(),
            message_id=message_id,
        )
        await self._dispatch("INTERACTION_CREATE", payload, guild_id=msg.guild_id)
        return payload

    def _find_command(self, name: str, guild: FakeGuild | None) -> JSON:
        scopes: list[int | None] = [guild.id, None] if guild else [None]
        for scope in scopes:
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    if guild is None and (
                        cmd.get("dm_permission") is False or 1 not in (cmd.get("contexts") or [1])
                    ):
                        raise ValueError(f"command {name!r} is not usable in DMs")
                    return cmd
        raise KeyError(f"slash command {name!r} is not registered for guild {guild and guild.id}")

    def _build_options(
        self,
        defs: list[JSON],
        values: Mapping[str, Any],
        resolved: JSON,
        guild: FakeGuild | None,
        channel_id: int,
    ) -> list[JSON]:
        by_name = {d["name"]: d for d in defs}
        out: list[JSON] = []
        for name, value in values.items():
            spec = by_name.get(name)
            if spec is None:
                raise KeyError(f"unknown option {name!r}; registered: {sorted(by_name)}")
            kind = spec["type"]
            if kind in (1, 2):  # sub-command (group)
                sub = self._build_options(
                    spec.get("options", []), value or {}, resolved, guild, channel_id
                )
                out.append({"name": name, "type": kind, "options": sub})
                continue
            choices = [c["value"] for c in spec.get("choices") or []]
            if choices and value not in choices:
                raise ValueError(f"option {name!r}: {value!r} is not one of {choices}")
            out.append(
                {
                    "name": name,
                    "type": kind,
                    "value": self._option_value(kind, value, resolved, guild, channel_id),
                }
            )
        for spec in defs:
            if spec.get("required") and spec["name"] not in values:
                raise ValueError(f"required option {spec['name']!r} missing")
        return out

    def _option_value(
        self, kind: int, value: Any, resolved: JSON, guild: FakeGuild | None, channel_id: int
    ) -> Any:
        if kind == 3:
            return str(value)
        if kind == 4:
            return int(value)
        if kind == 5:
            return bool(value)
        if kind == 10:
            return float(value)
        if kind == 11:
            filename, data, *ctype = value
            att = self._store_attachment(channel_id, filename, data, ctype[0] if ctype else None)
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload(ephemeral=True)
            return str(att.id)
        oid = int(value)
        if kind in (6, 9) and oid in self.users:
            resolved.setdefault("users", {})[str(oid)] = self.users[oid]
            if guild is not None:
                member = self._ensure_member(guild, oid)
                resolved.setdefault("members", {})[str(oid)] = {
                    **{k: v for k, v in member.items() if k != "user"},
                    "permissions": str(guild.permissions_of(oid)),
                }
        elif kind == 7:
            ch = self._channel_payload(oid)
            resolved.setdefault("channels", {})[str(oid)] = {
                k: ch[k] for k in ("id", "name", "type", "parent_id", "thread_metadata") if k in ch
            } | {"permissions": str(BOT_PERMISSIONS)}
        elif kind in (8, 9) and guild is not None and oid in guild.roles:
            resolved.setdefault("roles", {})[str(oid)] = guild.roles[oid]
        else:
            raise KeyError(f"option value {oid} does not resolve for option type {kind}")
        return str(oid)

    # ------------------------------------------------------------------ dispatching

    async def _dispatch(
        self,
        name: str,
        data: JSON | Callable[[_Session], JSON | None],
        *,
        guild_id: int | None = None,
    ) -> None:
        generic = data if isinstance(data, dict) else None
        for session in list(self._sessions.values()):
            if not session.handles(guild_id):
                continue
            payload = data if isinstance(data, dict) else data(session)
            if payload is None:
                continue
            generic = generic or payload
            await self._send_dispatch(session, name, payload)
        if generic is not None:
            self.events.append(GatewayEvent(name, generic))
        await self._notify()

    async def _send_dispatch(self, session: _Session, name: str, data: JSON) -> None:
        async with session.lock:
            session.seq += 1
            frame = _dumps({"op": OP_DISPATCH, "t": name, "s": session.seq, "d": data})
            session.buffer.append((session.seq, frame))
            if session.conn is not None:
                await session.conn.send(frame)

    async def _dispatch_message(self, name: str, msg: FakeMessage) -> None:
        """MESSAGE_CREATE/UPDATE, filtered by intents as Discord filters them."""
        if msg.ephemeral:
            return
        payload = msg.payload()
        if msg.guild_id is not None and msg.author_id == self.bot_id:
            guild = self.guilds[msg.guild_id]
            member = guild.members[self.bot_id]
            payload["member"] = {k: v for k, v in member.items() if k != "user"}
        mentioned = any(int(u["id"]) == self.bot_id for u in msg.mentions)

        def for_session(session: _Session) -> JSON | None:
            needed = INTENT_GUILD_MESSAGES if msg.guild_id is not None else INTENT_DIRECT_MESSAGES
            if not session.intents & needed:
                return None
            privileged_content = (
                session.intents & INTENT_MESSAGE_CONTENT
                or msg.guild_id is None
                or msg.author_id == self.bot_id
                or mentioned
            )
            if privileged_content:
                return payload
            return {**payload, "content": "", "embeds": [], "attachments": [], "components": []}

        await self._dispatch(name, for_session, guild_id=msg.guild_id)

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="Bad Request")
        await ws.prepare(request)
        self.gateway_connects.append(request.path_qs)
        compress = request.query.get("compress")
        conn = _Connection(ws, request, compress == "zlib-stream")
        self._connections.add(conn)
        try:
            if request.query.get("encoding", "json") != "json":
                await conn.close(4002, "Error while decoding payload.")  # etf is not supported
                return ws
            if compress not in (None, "zlib-stream"):
                await conn.close(4000, f"Unsupported compression {compress}.")
                return ws
            await self._gate.wait()
            if ws.closed:
                return ws
            hello = {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ["fake-gateway"]}
            await conn.send({"op": OP_HELLO, "d": hello, "s": None, "t": None})
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    payload = json.loads(msg.data)
                    op = payload["op"]
                except (ValueError, TypeError, KeyError):
                    await conn.close(4002, "Error while decoding payload.")
                    break
                try:
                    await self._on_gateway_op(conn, op, payload.get("d"))
                except Exception as exc:  # a fake bug (or a malformed payload): surface it
                    self.errors.append(exc)
                    await conn.close(4000, "Unknown error.")
                if ws.closed:
                    break
        finally:
            self._connections.discard(conn)
            session = conn.session
            if session is not None:
                async with session.lock:
                    if session.conn is conn:
                        session.conn = None
                # A client closing with 1000/1001 ends its session, as on Discord.
                if not conn.closed_by_server and ws.close_code in (1000, 1001):
                    self._sessions.pop(session.id, None)
            await self._notify()
        return ws

    async def _on_gateway_op(self, conn: _Connection, op: int, d: Any) -> None:
        redacted = {**d, "token": "<redacted>"} if isinstance(d, dict) and "token" in d else d
        self.received.append({"op": op, "d": redacted})
        if op in (OP_IDENTIFY, OP_RESUME, OP_REQUEST_MEMBERS) and not isinstance(d, dict):
            await conn.close(4002, "Error while decoding payload.")
        elif op == OP_HEARTBEAT:
            self.heartbeat_count += 1
            await conn.send({"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == OP_IDENTIFY:
            await self._identify(conn, d)
        elif op == OP_RESUME:
            await self._resume(conn, d)
        elif conn.session is None:
            await conn.close(4003, "Not authenticated.")
        elif op == OP_REQUEST_MEMBERS:
            await self._members_chunk(conn.session, d)
        elif op not in (OP_PRESENCE, OP_VOICE):
            await conn.close(4001, "Unknown opcode.")

    async def _identify(self, conn: _Connection, d: JSON) -> None:
        if conn.session is not None:
            await conn.close(4005, "Already authenticated.")
            return
        if d.get("token") != self.token:
            await conn.close(4004, "Authentication failed.")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or intents < 0:
            await conn.close(4013, "Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS and not self.privileged_intents:
            await conn.close(4014, "Disallowed intent(s).")
            return
        shard = d.get("shard")
        if shard is not None and not (0 <= shard[0] < shard[1]):
            await conn.close(4010, "Invalid shard.")
            return
        self.identify_count += 1
        session = _Session(secrets.token_hex(16), intents, tuple(shard) if shard else None)
        for old in [s for s in self._sessions.values() if s.shard == session.shard]:
            self._sessions.pop(old.id, None)  # a shard has one session at a time
        self._sessions[session.id] = session
        session.conn, conn.session = conn, session
        guilds = [g for g in self.guilds.values() if session.handles(g.id)]
        ready: JSON = {
            "v": 10,
            "user": {**self.bot_user, "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": self._app_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-gateway"],
        }
        if shard is not None:
            ready["shard"] = list(shard)
        await self._send_dispatch(session, "READY", ready)
        self.events.append(GatewayEvent("READY", ready))
        if intents & INTENT_GUILDS:
            for guild in guilds:
                payload = guild.payload()
                await self._send_dispatch(session, "GUILD_CREATE", payload)
                self.events.append(GatewayEvent("GUILD_CREATE", payload))
        await self._notify()

    async def _resume(self, conn: _Connection, d: JSON) -> None:
        if conn.session is not None:
            await conn.close(4005, "Already authenticated.")
            return
        if d.get("token") != self.token:
            await conn.close(4004, "Authentication failed.")
            return
        session = self._sessions.get(d.get("session_id") or "")
        seq = d.get("seq")
        if session is None or not isinstance(seq, int) or seq > session.seq:
            self.invalid_session_count += 1
            await conn.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        async with session.lock:
            old = session.conn
            session.conn, conn.session = conn, session
            for s, frame in session.buffer:
                if s > seq:
                    await conn.send(frame)
            session.seq += 1
            frame = _dumps({"op": OP_DISPATCH, "t": "RESUMED", "s": session.seq, "d": {}})
            session.buffer.append((session.seq, frame))
            await conn.send(frame)
        if old is not None and old is not conn:
            await old.close(4000, "Session resumed elsewhere.")
        self.resume_count += 1
        self.events.append(GatewayEvent("RESUMED", {}))
        await self._notify()

    async def _members_chunk(self, session: _Session, d: JSON) -> None:
        guild = self.guilds.get(int(d["guild_id"]))
        if guild is None:
            return
        wanted = d.get("user_ids")
        ids = {int(u) for u in ([wanted] if isinstance(wanted, (str, int)) else wanted or [])}
        members = [m for uid, m in guild.members.items() if not ids or uid in ids]
        prefix = (d.get("query") or "").lower()
        members = [m for m in members if m["user"]["username"].lower().startswith(prefix)]
        if d.get("limit"):
            members = members[: d["limit"]]
        chunk: JSON = {
            "guild_id": str(guild.id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [str(u) for u in ids if u not in guild.members],
        }
        if d.get("nonce") is not None:
            chunk["nonce"] = d["nonce"]
        await self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _app_flags(self) -> int:
        return _APP_FLAGS_PRIVILEGED if self.privileged_intents else 0

    # ------------------------------------------------------------------ REST plumbing

    def _add_routes(self, app: web.Application) -> None:
        api = r"/api/v{version:\d+}"
        add = app.router.add_route
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/resume", self._gateway)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._cdn)
        for method, path, handler in [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/users/{user}", self._get_user),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/applications/@me", self._get_application),
            ("GET", "/applications/{app}/commands", self._list_commands),
            ("PUT", "/applications/{app}/commands", self._overwrite_commands),
            ("POST", "/applications/{app}/commands", self._upsert_command),
            ("DELETE", "/applications/{app}/commands/{command}", self._delete_command),
            ("GET", "/applications/{app}/guilds/{guild}/commands", self._list_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._overwrite_commands),
            ("POST", "/applications/{app}/guilds/{guild}/commands", self._upsert_command),
            (
                "DELETE",
                "/applications/{app}/guilds/{guild}/commands/{command}",
                self._delete_command,
            ),
            ("GET", "/guilds/{guild}", self._get_guild),
            ("GET", "/guilds/{guild}/members/{user}", self._get_member),
            ("GET", "/channels/{channel}", self._get_channel),
            ("GET", "/channels/{channel}/messages", self._history),
            ("POST", "/channels/{channel}/messages", self._post_message),
            ("GET", "/channels/{channel}/messages/{message}", self._get_message),
            ("PATCH", "/channels/{channel}/messages/{message}", self._patch_message),
            ("DELETE", "/channels/{channel}/messages/{message}", self._delete_message),
            ("PUT", "/channels/{channel}/messages/{message}/reactions/{emoji}/@me", self._react),
            ("POST", "/channels/{channel}/typing", self._typing),
            ("POST", "/interactions/{interaction}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("GET", "/webhooks/{app}/{token}/messages/{message}", self._get_webhook_message),
            ("PATCH", "/webhooks/{app}/{token}/messages/{message}", self._patch_webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{message}", self._delete_webhook_message),
        ]:
            add(method, api + path, handler)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        match = re.match(r"^/api/v\d+(/.*)$", request.path)
        if match is None:  # gateway and CDN
            for failure in self._failures:
                if failure.times > 0 and failure.pattern in f"{request.method} {request.path}":
                    failure.times -= 1
                    return failure.error.response()
            return await handler(request)
        path = match.group(1)
        call = RestCall(request.method, path, None)
        try:
            body, uploads = await _read_body(request)
            call = RestCall(request.method, path, body)
            request[_BODY], request[_UPLOADS] = body, uploads
        except DiscordError as exc:
            self.sent.append(call)
            return exc.response()
        self.sent.append(call)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            limited = self._check_rate_limit(f"{request.method} {path}")
            if limited is not None:
                return limited
            for failure in self._failures:
                if failure.times > 0 and failure.pattern in f"{request.method} {path}":
                    failure.times -= 1
                    raise failure.error
            public = path.startswith(("/webhooks/", "/interactions/")) or path == "/gateway"
            if not public and request.headers.get("Authorization") != f"Bot {self.token}":
                raise UNAUTHORIZED
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                self.unhandled.append(call)
                raise DiscordError(404, 0, "404: Not Found") from None
            except web.HTTPMethodNotAllowed:
                self.unhandled.append(call)
                raise DiscordError(405, 0, "405: Method Not Allowed") from None
        except DiscordError as exc:
            response = exc.response()
        except Exception as exc:  # a fake bug: fail fast instead of a 500 discord.py retries
            self.errors.append(exc)
            response = DiscordError(400, 0, f"FakeDiscord internal error: {exc!r}").response()
        finally:
            await self._notify()
        resource = request.match_info.route.resource
        bucket = resource.canonical if resource is not None else path
        _ratelimit_headers(response, f"{request.method} {bucket}", 50, 49, 1.0)
        return response

    def _check_rate_limit(self, key: str) -> web.Response | None:
        for rule in self._rate_rules:
            if rule.times > 0 and rule.pattern in key:
                rule.times -= 1
                body = {
                    "message": "You are being rate limited.",
                    "retry_after": rule.retry_after,
                    "global": rule.is_global,
                }
                if not rule.is_global:
                    body["code"] = 0
                response = _json_response(body, status=429)
                if rule.cloudflare:
                    response.headers["Via"] = ""  # what discord.py reads as a ban
                _ratelimit_headers(response, key, 50, 0, rule.retry_after)
                response.headers["Retry-After"] = str(max(1, round(rule.retry_after)))
                response.headers["X-RateLimit-Scope"] = "global" if rule.is_global else "user"
                if rule.is_global:
                    response.headers["X-RateLimit-Global"] = "true"
                return response
        return None

    @staticmethod
    def _json(request: web.Request) -> JSON:
        body = request[_BODY]
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise DiscordError(400, 50109, "The request body contains invalid JSON.")
        return body

    @staticmethod
    def _uploads(request: web.Request) -> list[tuple[int, str, bytes]]:
        return request[_UPLOADS]

    @staticmethod
    def _snowflake_param(request: web.Request, name: str) -> int:
        try:
            return int(request.match_info[name])
        except ValueError:
            raise _form_error(
                [name + "_id"], "NUMBER_TYPE_COERCE", "Value is not snowflake."
            ) from None

    # ------------------------------------------------------------------ REST: users, app, gateway

    async def _get_me(self, request: web.Request) -> web.Response:
        me = {**self.bot_user, "verified": True, "mfa_enabled": False, "email": None}
        return _json_response({**me, "locale": "en-US", "premium_type": 0})

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(self._snowflake_param(request, "user"))
        if user is None:
            raise _unknown("User", 10013)
        return _json_response(user)

    async def _create_dm(self, request: web.Request) -> web.Response:
        recipient = int(self._json(request).get("recipient_id", 0))
        if recipient not in self.users or recipient == self.bot_id:
            raise _unknown("User", 10013)
        return _json_response(self._channel_payload(self.dm_channel(recipient)))

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return _json_response({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _get_application(self, request: web.Request) -> web.Response:
        owner_id = next((u for u in self.users if u != self.bot_id), 111_111_111_111_111_111)
        owner = self.users.get(owner_id) or self._user_payload(owner_id, "owner")
        return _json_response(
            {
                "id": str(self.application_id),
                "name": self.username,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": self.bot_user,
                "owner": owner,
                "team": None,
                "verify_key": hashlib.sha256(str(self.application_id).encode()).hexdigest(),
                "flags": self._app_flags(),
                "tags": [],
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "approximate_guild_count": len(self.guilds),
                "integration_types_config": {"0": {}, "1": {}},
            }
        )

    async def _get_guild(self, request: web.Request) -> web.Response:
        guild = self.guilds.get(self._snowflake_param(request, "guild"))
        if guild is None:
            raise _unknown("Guild", 10004)
        payload = guild.payload()
        for key in ("channels", "threads", "members", "voice_states", "presences", "joined_at"):
            payload.pop(key)
        return _json_response(payload)

    async def _get_member(self, request: web.Request) -> web.Response:
        guild = self.guilds.get(self._snowflake_param(request, "guild"))
        if guild is None:
            raise _unknown("Guild", 10004)
        member = guild.members.get(self._snowflake_param(request, "user"))
        if member is None:
            raise _unknown("Member", 10007)
        return _json_response(member)

    # ------------------------------------------------------------------ REST: commands

    def _command_scope(self, request: web.Request) -> int | None:
        if request.match_info["app"] != str(self.application_id):
            raise MISSING_ACCESS
        guild = request.match_info.get("guild")
        if guild is None:
            return None
        if not guild.isdigit() or int(guild) not in self.guilds:
            raise MISSING_ACCESS  # discord.py reports this as a missing applications.commands scope
        return int(guild)

    async def _list_commands(self, request: web.Request) -> web.Response:
        return _json_response(self.commands.get(self._command_scope(request), []))

    async def _overwrite_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body = request[_BODY]
        if not isinstance(body, list):
            raise _form_error([], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        if len(body) > 100:
            raise _form_error([], "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        seen: set[tuple[str, int]] = set()
        for index, cmd in enumerate(body):
            _validate_command(cmd, [str(index)])
            key = (cmd["name"], cmd.get("type", 1))
            if key in seen:
                raise _form_error(
                    [],
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    f"Application command names must be unique: {key[0]}",
                )
            seen.add(key)
        old = {(c["name"], c["type"]): c for c in self.commands.get(scope, [])}
        self.commands[scope] = [self._command(cmd, scope, old) for cmd in body]
        return _json_response(self.commands[scope])

    async def _upsert_command(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        cmd = self._json(request)
        _validate_command(cmd, [])
        current = self.commands.setdefault(scope, [])
        old = {(c["name"], c["type"]): c for c in current}
        new = self._command(cmd, scope, old)
        existed = (new["name"], new["type"]) in old
        current[:] = [c for c in current if c["id"] != new["id"]] + [new]
        return _json_response(new, status=200 if existed else 201)

    async def _delete_command(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        current = self.commands.get(scope, [])
        remaining = [c for c in current if c["id"] != request.match_info["command"]]
        if len(remaining) == len(current):
            raise _unknown("application command", 10063)
        self.commands[scope] = remaining
        return web.Response(status=204)

    def _command(self, cmd: JSON, scope: int | None, old: Mapping[tuple[str, int], JSON]) -> JSON:
        kind = cmd.get("type", 1)
        previous = old.get((cmd["name"], kind))
        out: JSON = {
            "id": previous["id"] if previous else str(self.snowflake()),
            "application_id": str(self.application_id),
            "version": str(self.snowflake()),
            "type": kind,
            "name": cmd["name"],
            "name_localizations": cmd.get("name_localizations"),
            "description": cmd.get("description", ""),
            "description_localizations": cmd.get("description_localizations"),
            "default_member_permissions": cmd.get("default_member_permissions"),
            "nsfw": cmd.get("nsfw", False),
            "contexts": cmd.get("contexts"),
            "integration_types": cmd.get("integration_types") or [0],
            "options": cmd.get("options", []),
        }
        if scope is None:
            out["dm_permission"] = cmd.get("dm_permission", True)
        else:
            out["guild_id"] = str(scope)
        return out

    # ------------------------------------------------------------------ REST: channels, messages

    async def _get_channel(self, request: web.Request) -> web.Response:
        cid = self._snowflake_param(request, "channel")
        return _json_response(self._channel_payload(cid))

    def _message_in(self, request: web.Request) -> FakeMessage:
        cid = self._snowflake_param(request, "channel")
        self._channel_payload(cid)
        mid = self._snowflake_param(request, "message")
        msg = self.messages.get(mid)
        if msg is None or msg.channel_id != cid or msg.deleted or msg.ephemeral:
            raise _unknown("Message", 10008)
        return msg

    async def _history(self, request: web.Request) -> web.Response:
        cid = self._snowflake_param(request, "channel")
        self._channel_payload(cid)
        q = request.query
        limit = max(1, min(100, int(q.get("limit", 50))))
        msgs = sorted(self.channel_messages(cid, include_users=True), key=lambda m: m.id)
        if "before" in q:
            msgs = [m for m in msgs if m.id < int(q["before"])]
        if "after" in q:
            msgs = [m for m in msgs if m.id > int(q["after"])][:limit]
        return _json_response([m.payload() for m in reversed(msgs[-limit:])])

    async def _get_message(self, request: web.Request) -> web.Response:
        return _json_response(self._message_in(request).payload())

    async def _post_message(self, request: web.Request) -> web.Response:
        cid = self._snowflake_param(request, "channel")
        self._channel_payload(cid)
        msg = self._new_bot_message(cid, self._json(request), self._uploads(request))
        self.messages[msg.id] = msg
        await self._dispatch_message("MESSAGE_CREATE", msg)
        return _json_response(msg.payload())

    async def _patch_message(self, request: web.Request) -> web.Response:
        msg = self._message_in(request)
        if msg.author_id != self.bot_id:
            raise NOT_AUTHOR
        self._edit_message(msg, self._json(request), self._uploads(request))
        await self._dispatch_message("MESSAGE_UPDATE", msg)
        return _json_response(msg.payload())

    async def _delete_message(self, request: web.Request) -> web.Response:
        msg = self._message_in(request)
        await self._delete(msg)
        return web.Response(status=204)

    async def _delete(self, msg: FakeMessage) -> None:
        msg.deleted = True
        data: JSON = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
        if not msg.ephemeral:
            await self._dispatch("MESSAGE_DELETE", data, guild_id=msg.guild_id)

    async def _react(self, request: web.Request) -> web.Response:
        msg = self._message_in(request)
        emoji = request.match_info["emoji"]
        if emoji not in msg.reactions:
            msg.reactions.append(emoji)
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        cid = self._snowflake_param(request, "channel")
        self._channel_payload(cid)
        self.typing.append((cid, time.monotonic()))
        return web.Response(status=204)

    async def _cdn(self, request: web.Request) -> web.Response:
        att = self.attachments.get(int(request.match_info["attachment"]))
        if att is None or f"/attachments/{request.match_info['channel']}/" not in att.url:
            return web.Response(status=404, text="Not Found")
        self.downloads.append(att.id)
        return web.Response(
            body=att.data, content_type=att.content_type or "application/octet-stream"
        )

    # ------------------------------------------------------------------ message building

    def _new_bot_message(
        self,
        channel_id: int,
        body: JSON,
        uploads: list[tuple[int, str, bytes]],
        *,
        path: Sequence[str] = (),
        interaction: FakeInteraction | None = None,
        msg_type: int = MSG_DEFAULT,
        flags: int = 0,
    ) -> FakeMessage:
        _validate_message(body, uploads, path, self.max_upload_bytes)
        guild = self._guild_of_channel(channel_id)
        reference = None
        referenced = None
        ref = body.get("message_reference")
        if ref:
            referenced = self.messages.get(int(ref.get("message_id", 0)))
            if referenced is not None and referenced.deleted:
                referenced = None  # Discord knows a deleted message no more
            if referenced is None and ref.get("fail_if_not_exists", True):
                raise _form_error(
                    [*path, "message_reference"],
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message",
                )
            if referenced is not None:
                reference = self._reference(referenced)
                msg_type = MSG_REPLY
        msg = FakeMessage(
            id=self.snowflake(),
            channel_id=channel_id,
            guild_id=guild.id if guild else None,
            author=self.bot_user,
            content=body.get("content") or "",
            timestamp=_iso(time.time()),
            embeds=list(body.get("embeds") or []),
            components=list(body.get("components") or []),
            flags=(int(body.get("flags") or 0) & ~FLAG_EPHEMERAL) | flags,
            type=msg_type,
            tts=bool(body.get("tts")),
            nonce=body.get("nonce"),
            reference=reference,
            referenced=referenced,
        )
        msg.attachments = self._new_attachments(channel_id, body, uploads)
        msg.mentions = self._parse_mentions(msg.content, body, guild)
        if interaction is not None:
            msg.webhook_id = self.application_id
            msg.interaction = self._interaction_metadata(interaction)
        return msg

    def _interaction_metadata(self, rec: FakeInteraction) -> JSON:
        return {
            "id": str(rec.id),
            "type": 2,
            "name": rec.name,
            "command_type": 1,
            "user": self.users[rec.user_id],
            "authorizing_integration_owners": rec.payload["authorizing_integration_owners"],
        }

    def _new_attachments(
        self, channel_id: int, body: JSON, uploads: list[tuple[int, str, bytes]]
    ) -> list[FakeAttachment]:
        described = {str(a.get("id")): a for a in body.get("attachments") or []}
        out = []
        for index, filename, data in uploads:
            meta = described.get(str(index), {})
            out.append(
                self._store_attachment(
                    channel_id,
                    meta.get("filename") or filename,
                    data,
                    None,
                    meta.get("description"),
                )
            )
        return out

    def _parse_mentions(self, content: str, body: JSON, guild: FakeGuild | None) -> list[JSON]:
        allowed = body.get("allowed_mentions")
        ids = [int(m) for m in re.findall(r"<@!?(\d+)>", content)]
        if allowed is not None and "users" not in allowed.get("parse", []):
            permitted = {int(u) for u in allowed.get("users", [])}
            ids = [i for i in ids if i in permitted]
        users = [self.users[i] for i in dict.fromkeys(ids) if i in self.users]
        if guild is None:
            return users
        return [self._mention(guild, u) for u in users]

    def _edit_message(
        self,
        msg: FakeMessage,
        body: JSON,
        uploads: list[tuple[int, str, bytes]],
        path: Sequence[str] = (),
    ) -> None:
        content = body.get("content", msg.content) or ""
        if not isinstance(content, str):
            raise _form_error(
                [*path, "content"], "STRING_TYPE_CONVERT", "Could not interpret value as string."
            )
        if len(content) > MAX_CONTENT:
            raise _form_error(
                [*path, "content"],
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_CONTENT} or fewer in length.",
            )
        _validate_uploads(uploads, path, self.max_upload_bytes)
        if "attachments" in body:
            keep = {str(a.get("id")) for a in body["attachments"] or []}
            kept = [a for a in msg.attachments if str(a.id) in keep]
        else:
            kept = list(msg.attachments)
        attachments = kept + self._new_attachments(msg.channel_id, body, uploads)
        embeds = list(body["embeds"] or []) if "embeds" in body else msg.embeds
        components = list(body["components"] or []) if "components" in body else msg.components
        if not content and not embeds and not attachments and not components:
            raise EMPTY_MESSAGE
        if content != msg.content:
            msg.history.append(msg.content)
        msg.content, msg.attachments, msg.embeds, msg.components = (
            content,
            attachments,
            embeds,
            components,
        )
        if "flags" in body and body["flags"] is not None:
            msg.flags = (msg.flags & (FLAG_EPHEMERAL | FLAG_LOADING)) | (
                int(body["flags"]) & ~(FLAG_EPHEMERAL | FLAG_LOADING)
            )
        msg.flags &= ~FLAG_LOADING
        msg.mentions = self._parse_mentions(content, body, self._guild_of_channel(msg.channel_id))
        msg.edited_timestamp = _iso(time.time())

    # ------------------------------------------------------------------ REST: interactions

    def _interaction_by_token(self, request: web.Request) -> FakeInteraction:
        if request.match_info["app"] != str(self.application_id):
            raise _unknown("Webhook", 10015)
        token = request.match_info["token"]
        for rec in self.interactions.values():
            if rec.token == token and rec.callback_type is not None:
                return rec
        raise _unknown("Webhook", 10015)

    async def _callback(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        rec = self.interactions.get(int(request.match_info["interaction"]))
        if rec is None or rec.token != request.match_info["token"]:
            raise _unknown("interaction", 10062)
        elapsed = now - rec.dispatched_at
        if elapsed > self.interaction_deadline:
            rec.late_callbacks.append(elapsed)
            rec.note(f"late callback rejected after {elapsed:.3f}s")
            raise _unknown("interaction", 10062)
        if rec.callback_type is not None:
            raise ALREADY_ACKNOWLEDGED
        body = self._json(request)
        kind = body.get("type")
        data = body.get("data") or {}
        if kind not in (4, 5, 6, 7, 8, 9, 10, 12):
            raise _form_error(
                ["type"], "BASE_TYPE_CHOICES", "Value must be one of {4, 5, 6, 7, 8, 9, 10, 12}."
            )
        ephemeral = bool(int(data.get("flags") or 0) & FLAG_EPHEMERAL)
        if kind == 4:
            msg = self._new_bot_message(
                rec.channel_id,
                data,
                self._uploads(request),
                path=["data"],
                interaction=rec,
                msg_type=MSG_CHAT_INPUT_COMMAND,
                flags=FLAG_EPHEMERAL if ephemeral else 0,
            )
        elif kind == 5:
            flags = FLAG_LOADING | (FLAG_EPHEMERAL if ephemeral else 0)
            msg = self._loading_message(rec, flags)
        elif kind == 7 and rec.message_id is not None:
            # UPDATE_MESSAGE: a component interaction edits the message of its button.
            updated = self.messages[rec.message_id]
            updated.history.append(updated.content)
            if "content" in data:
                updated.content = data["content"] or ""
            if "components" in data:
                updated.components = list(data["components"] or [])
            updated.edited_timestamp = _iso(time.time())
            await self._dispatch_message("MESSAGE_UPDATE", updated)
            msg = None
        else:
            msg = None
        rec.callback_type, rec.callback_data, rec.acked_at = kind, body, now
        rec.ephemeral = ephemeral
        rec.original = msg
        rec.note(f"callback {kind}" + (" ephemeral" if ephemeral else ""))
        if msg is not None:
            self.messages[msg.id] = msg
            await self._dispatch_message("MESSAGE_CREATE", msg)
        if request.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        info: JSON = {"id": str(rec.id), "type": 2}
        out: JSON = {"interaction": info}
        if msg is not None:
            info.update(
                response_message_id=str(msg.id),
                response_message_loading=kind == 5,
                response_message_ephemeral=ephemeral,
            )
            out["resource"] = {"type": kind, "message": msg.payload()}
        else:
            out["resource"] = {"type": kind}
        return _json_response(out)

    def _loading_message(self, rec: FakeInteraction, flags: int) -> FakeMessage:
        """The "<bot> is thinking..." placeholder a deferred response creates."""
        msg = FakeMessage(
            id=self.snowflake(),
            channel_id=rec.channel_id,
            guild_id=rec.guild_id,
            author=self.bot_user,
            content="",
            timestamp=_iso(time.time()),
            flags=flags,
            type=MSG_CHAT_INPUT_COMMAND,
            webhook_id=self.application_id,
        )
        msg.interaction = self._interaction_metadata(rec)
        return msg

    async def _followup(self, request: web.Request) -> web.Response:
        rec = self._interaction_by_token(request)
        body = self._json(request)
        uploads = self._uploads(request)
        original = rec.original
        if rec.deferred and original is not None and original.flags & FLAG_LOADING:
            # The first follow-up after a defer fills in the "thinking" message, inheriting
            # the defer's ephemerality.
            _validate_message(body, uploads, (), self.max_upload_bytes)
            self._edit_message(original, body, uploads)
            msg = original
            rec.note("followup (fills deferred original)")
            await self._dispatch_message("MESSAGE_UPDATE", msg)
        else:
            ephemeral = bool(int(body.get("flags") or 0) & FLAG_EPHEMERAL)
            msg = self._new_bot_message(
                rec.channel_id,
                body,
                uploads,
                interaction=rec,
                flags=FLAG_EPHEMERAL if ephemeral else 0,
            )
            self.messages[msg.id] = msg
            rec.note("followup" + (" ephemeral" if ephemeral else ""))
            await self._dispatch_message("MESSAGE_CREATE", msg)
        rec.followups.append(msg)
        if request.query.get("wait") not in ("1", "true", "True"):
            return web.Response(status=204)
        return _json_response(msg.payload())

    def _webhook_message(self, request: web.Request, rec: FakeInteraction) -> FakeMessage:
        ref = request.match_info["message"]
        if ref == "@original":
            if rec.original is None or rec.original.deleted:
                raise _unknown("Message", 10008)
            return rec.original
        for msg in rec.followups:
            if str(msg.id) == ref and not msg.deleted:
                return msg
        raise _unknown("Message", 10008)

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        rec = self._interaction_by_token(request)
        return _json_response(self._webhook_message(request, rec).payload())

    async def _patch_webhook_message(self, request: web.Request) -> web.Response:
        rec = self._interaction_by_token(request)
        msg = self._webhook_message(request, rec)
        body = self._json(request)
        self._edit_message(msg, body, self._uploads(request))
        if msg is rec.original:
            rec.original_edits.append(body)
        rec.note(f"edit {request.match_info['message']}")
        await self._dispatch_message("MESSAGE_UPDATE", msg)
        return _json_response(msg.payload())

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        rec = self._interaction_by_token(request)
        msg = self._webhook_message(request, rec)
        rec.note(f"delete {request.match_info['message']}")
        await self._delete(msg)
        return web.Response(status=204)


# --------------------------------------------------------------------------- helpers


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[int, str, bytes]]]:
    """JSON body, or multipart ``payload_json`` + ``files[n]`` parts as discord.py sends them."""
    uploads: list[tuple[int, str, bytes]] = []
    if request.content_type.startswith("multipart/"):
        payload: Any = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            if name == "payload_json":
                try:
                    payload = json.loads(await part.text())
                except ValueError:
                    raise DiscordError(
                        400, 50109, "The request body contains invalid JSON."
                    ) from None
            elif match := re.fullmatch(r"files\[(\d+)\]|file(\d*)", name):
                index = int(match.group(1) or match.group(2) or 0)
                uploads.append((index, part.filename or f"file{index}", bytes(await part.read())))
        return payload, uploads
    if not request.can_read_body:
        return None, uploads
    text = await request.text()
    if not text:
        return None, uploads
    try:
        return json.loads(text), uploads
    except ValueError:
        raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None


def _image_size(data: bytes) -> tuple[int, int] | None:
    """An image's pixels (Discord states them for images), or None for other files."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _validate_uploads(
    uploads: list[tuple[int, str, bytes]], path: Sequence[str], limit: int
) -> None:
    if len(uploads) > MAX_FILES:
        raise _form_error(
            [*path, "attachments"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
        )
    if any(len(data) > limit for _, _, data in uploads):
        raise TOO_LARGE


def _validate_message(
    body: JSON, uploads: list[tuple[int, str, bytes]], path: Sequence[str], limit: int
) -> None:
    """Reject what Discord rejects: over-long content, too many embeds/files, empty messages."""
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise _form_error(
            [*path, "content"], "STRING_TYPE_CONVERT", "Could not interpret value as string."
        )
    if content and len(content) > MAX_CONTENT:
        raise _form_error(
            [*path, "content"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
        )
    embeds = body.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        raise _form_error(
            [*path, "embeds"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
        )
    _validate_uploads(uploads, path, limit)
    if not (
        content
        or embeds
        or uploads
        or body.get("sticker_ids")
        or body.get("components")
        or body.get("poll")
    ):
        raise EMPTY_MESSAGE


def _validate_command(cmd: Any, path: list[str]) -> None:
    if not isinstance(cmd, dict):
        raise _form_error(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
    kind = cmd.get("type", 1)
    name = cmd.get("name")
    if (
        not isinstance(name, str)
        or not _COMMAND_NAME.match(name)
        or (kind == 1 and name != name.lower())
    ):
        raise _form_error(
            [*path, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
        )
    description = cmd.get("description") or ""
    if kind == 1 and not 1 <= len(description) <= 100:
        raise _form_error(
            [*path, "description"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
        )
    _validate_options(cmd.get("options") or [], [*path, "options"])


def _validate_options(options: list[JSON], path: list[str]) -> None:
    if len(options) > 25:
        raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    for index, opt in enumerate(options):
        where = [*path, str(index)]
        name = opt.get("name")
        if not isinstance(name, str) or not _COMMAND_NAME.match(name) or name != name.lower():
            raise _form_error(
                [*where, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        if not 1 <= len(opt.get("description") or "") <= 100:
            raise _form_error(
                [*where, "description"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if opt.get("type") in (1, 2):
            _validate_options(opt.get("options") or [], [*where, "options"])
            continue
        if opt.get("required"):
            if seen_optional:
                raise _form_error(
                    where,
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        if len(opt.get("choices") or []) > 25:
            raise _form_error(
                [*where, "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )


def _ratelimit_headers(
    response: web.StreamResponse, bucket_key: str, limit: int, remaining: int, reset_after: float
) -> None:
    """Headers discord.py's buckets read; ``Via`` marks a 429 as Discord's, not Cloudflare's."""
    headers = response.headers
    headers.setdefault("X-RateLimit-Bucket", hashlib.sha1(bucket_key.encode()).hexdigest()[:32])
    headers.setdefault("X-RateLimit-Limit", str(limit))
    headers.setdefault("X-RateLimit-Remaining", str(remaining))
    headers.setdefault("X-RateLimit-Reset", f"{time.time() + reset_after:.3f}")
    headers.setdefault("X-RateLimit-Reset-After", f"{reset_after:.3f}")
    headers.setdefault("Via", "1.1 google")
