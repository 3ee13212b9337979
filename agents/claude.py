"""Claude through the Messages API (the official ``anthropic`` SDK), streaming.

The request puts the stable prefix first (system prompt, then the rolling summaries)
with a ``cache_control`` breakpoint at its end, and a second breakpoint at the end
of the history, so that each turn reads everything up to the previous turn from
Claude's prompt cache. Retries are ours, not the SDK's, so that every attempt is
bounded, honours retry-after, and never repeats text already streamed to a chat.

Every attempt is charged for what the API reported or sent, failed ones too: input
from message_start, output from the last message_delta or, when the stream broke
before it, counted from the text received. Retried attempts add to the reply's
usage; a call that gives up carries its cost on the AgentError. An attempt that
failed before the API said a word is charged nothing, for nothing was reported.

Files (images, PDFs) go as image and document blocks before the text of the turn
that carried them (the order the vision guide recommends), so they sit inside the
cached prefix like any text. A model listed in ``claude.text_only_models``, or one
the API answers 400 for files, gets the text alone (which names each file); so does
a file the API refused. Either way the reply ends with a note saying so, and the
files stay in memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator, Mapping
from typing import Literal, cast

import anthropic
import httpx2
from anthropic.types import (
    Base64ImageSourceParam,
    Base64PDFSourceParam,
    CacheControlEphemeralParam,
    DocumentBlockParam,
    ImageBlockParam,
    MessageParam,
    RawMessageStreamEvent,
    TextBlockParam,
)

from agents.base import (
    AgentError,
    AgentEvent,
    AgentReply,
    AgentRequest,
    PromptTooLong,
    TextDelta,
)
from agents.pricing import Pricing
from agents.settings import ClaudeSettings
from memory.tokens import TokenCounter
from memory.types import Context, ContextMessage, Role, Usage

log = logging.getLogger(__name__)

EPHEMERAL: CacheControlEphemeralParam = {"type": "ephemeral"}
_TOO_LONG = re.compile(r"prompt is too long: (\d+) tokens")
# An error event inside a streamed answer arrives on a 200 response: its status is
# the one the API gives that error type when it answers with an error outright.
_ERROR_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
# A 400 about the files of a request (not its text): the request goes again without.
_ABOUT_FILES = re.compile(r"\b(image|images|document|pdf|media|vision)\b", re.IGNORECASE)
_ABOUT_MODEL = re.compile(r"\bmodel\b", re.IGNORECASE)
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

Block = TextBlockParam | ImageBlockParam | DocumentBlockParam
ImageType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]


class _FilesRefused(Exception):
    """The API answered 400 about a request's files."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def file_block(media_type: str, data: str) -> ImageBlockParam | DocumentBlockParam | None:
    """The image or document block of a file (``data`` in base64), as turns and
    summaries (agents/claude_summarizer.py) send it; None for a type the API cannot read."""
    if media_type in _IMAGE_TYPES:
        image: Base64ImageSourceParam = {
            "type": "base64",
            "media_type": cast(ImageType, media_type),
            "data": data,
        }
        return {"type": "image", "source": image}
    if media_type == "application/pdf":
        pdf: Base64PDFSourceParam = {
            "type": "base64",
            "media_type": "application/pdf",
            "data": data,
        }
        return {"type": "document", "source": pdf}
    return None


def _content(message: ContextMessage, media: Mapping[str, str]) -> list[Block]:
    blocks: list[Block] = []
    for sha256, media_type, *_ in message.media:
        data = media.get(sha256)
        block = file_block(media_type, data) if data is not None else None
        if block is not None:
            blocks.append(block)
    blocks.append({"type": "text", "text": message.text})
    return blocks


def build_request(
    context: Context, media: Mapping[str, str] | None = None
) -> tuple[list[TextBlockParam], list[MessageParam]]:
    """System blocks and messages for the Messages API, with cache breakpoints.

    ``media`` holds the base64 data of the context's files by content hash; a file
    not in it is left out (its message's text names it)."""
    system: list[TextBlockParam] = []
    if context.system:
        system.append({"type": "text", "text": context.system})
    if context.summaries:
        text = "Summary of the earlier conversation (oldest first):\n\n" + "\n\n---\n\n".join(
            context.summaries
        )
        system.append({"type": "text", "text": text})
    if system:
        system[-1]["cache_control"] = EPHEMERAL
    contents: list[list[Block]] = [
        _content(m, media) if m.media and media else [{"type": "text", "text": m.text}]
        for m in context.messages
    ]
    if contents:
        contents[-1][-1]["cache_control"] = EPHEMERAL
    messages = [_message(m.role, c) for m, c in zip(context.messages, contents, strict=True)]
    return system, messages


def _message(role: Role, content: list[Block]) -> MessageParam:
    if role is Role.ASSISTANT:
        return {"role": "assistant", "content": content}
    return {"role": "user", "content": content}


def files_refused(error: anthropic.APIStatusError) -> str | None:
    """The API's reason when it answered 400 about a request's files (a model that
    cannot read them, a file it cannot read), not its text; else None."""
    if _status(error) != 400 or _TOO_LONG.search(str(error.message)):
        return None
    text = _error_text(error)
    return text if _ABOUT_FILES.search(text) else None


def about_the_model(reason: str) -> bool:
    """Whether a refusal of files (``files_refused``) is about the model, which then
    cannot read any file, rather than about these files."""
    return _ABOUT_MODEL.search(reason) is not None


def _error_text(error: anthropic.APIStatusError) -> str:
    """The API's own message from its error envelope (the SDK's also names the status)."""
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(error.message)


def _status(error: anthropic.APIStatusError) -> int:
    """The HTTP status, or for an error event mid-stream the one its type stands for."""
    if error.status_code != 200 or not isinstance(error.body, dict):
        return error.status_code
    detail = error.body.get("error")
    kind = detail.get("type") if isinstance(detail, dict) else None
    return _ERROR_EVENT_STATUS.get(str(kind), 500)


def _retry_after(error: anthropic.APIStatusError) -> float | None:
    value: str | None = error.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _Accumulated:
    """What a reply's stream events add up to: text, usage, model, stop reason."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.started = False  # message_start came: the API has counted the prompt
        self.streamed = False
        self.stop_reason: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0

    def add(self, event: RawMessageStreamEvent) -> str | None:
        """Take one event in; the text it adds, if any."""
        if event.type == "content_block_delta":
            if event.delta.type == "text_delta":
                self.streamed = True
                self.parts.append(event.delta.text)
                return event.delta.text
        elif event.type == "message_start":
            self.started = True
            message = event.message
            self.model = message.model
            self.input_tokens = message.usage.input_tokens
            self.output_tokens = message.usage.output_tokens
            self.cache_read_tokens = message.usage.cache_read_input_tokens or 0
            self.cache_write_tokens = message.usage.cache_creation_input_tokens or 0
        elif event.type == "message_delta":
            self.stop_reason = event.delta.stop_reason
            # Totals so far, not increments; the optional ones only when they changed.
            u = event.usage
            self.output_tokens = u.output_tokens
            if u.input_tokens is not None:
                self.input_tokens = u.input_tokens
            if u.cache_read_input_tokens is not None:
                self.cache_read_tokens = u.cache_read_input_tokens
            if u.cache_creation_input_tokens is not None:
                self.cache_write_tokens = u.cache_creation_input_tokens
        return None

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
        )

    def charged(self, tokens: TokenCounter) -> Usage:
        """What an attempt that failed cost: as reported, output counted from the text
        received when the stream broke before the last message_delta."""
        if not self.started:
            return Usage()
        usage = self.usage()
        if self.stop_reason is None:  # no message_delta: only message_start's count
            output = max(self.output_tokens, tokens.count("".join(self.parts)))
            usage = Usage(
                usage.input_tokens, output, usage.cache_read_tokens, usage.cache_write_tokens
            )
        return usage

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


class ClaudeAgent:
    name = "claude"

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        settings: ClaudeSettings,
        pricing: Pricing,
        tokens: TokenCounter | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._pricing = pricing
        self._tokens = tokens or TokenCounter()  # output of a broken stream, estimated
        self._auth_logged = False
        # Learned from the API's 400 answers (this process): models that cannot read
        # files, and files the API refused to read.
        self._text_only: set[str] = set(settings.text_only_models)
        self._refused: set[str] = set()

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    def _sendable(self, request: AgentRequest) -> Mapping[str, str]:
        if not request.media or request.model in self._text_only:
            return {}
        if not self._refused:
            return request.media
        return {k: v for k, v in request.media.items() if k not in self._refused}

    def _note(self, request: AgentRequest, media: Mapping[str, str], refused: str) -> str:
        """What the reply adds when the files of the question did not reach the model."""
        context = request.context
        newest = context.messages[-1] if context.messages else None
        if newest is None or newest.role is not Role.USER:
            return ""
        files = [ref[0] for ref in newest.media]
        unsent = sum(1 for sha256 in files if sha256 not in media) + context.media_left_out
        if not unsent:
            return ""
        what = "your file" if unsent == 1 else "your files"
        kept = f"{what.capitalize()} {'is' if unsent == 1 else 'are'} kept with the conversation."
        if request.model in self._text_only:
            why = f"{request.model} can't read images or PDFs"
        elif refused or any(sha256 in self._refused for sha256 in files):
            reason = f" ({refused.rstrip('.')})" if refused else ""
            why = f"Claude couldn't read {what}{reason}"
        elif context.media_left_out:
            why = f"{what.capitalize()} didn't fit in this conversation's token budget"
        else:
            why = f"{what.capitalize()} could not be found any more"
        return f"\n\n({why}, so I answered from the text alone. {kept})"

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        media = self._sendable(request)
        system, messages = build_request(request.context, media)
        refused = ""
        attempt = 0
        failed = Usage()  # what the failed attempts so far were charged, unpriced
        while True:
            reply = _Accumulated(request.model)
            try:
                # The raw event stream, not messages.stream(): that helper rebuilds a
                # snapshot of the whole message on every event, which a chat bot that
                # only shows text does not need (it was a tenth of a turn's CPU).
                events = await self._client.messages.create(
                    model=request.model,
                    max_tokens=request.max_tokens,
                    system=system,
                    messages=messages,
                    stream=True,
                )
                async with events:
                    async for event in events:
                        text = reply.add(event)
                        if text:
                            yield TextDelta(text)
            except (anthropic.APIStatusError, anthropic.APIConnectionError) as error:
                failed += reply.charged(self._tokens)
                try:
                    wait = self._retry_or_raise(
                        error, attempt, reply.streamed, request, failed, bool(media)
                    )
                except _FilesRefused as files:
                    # Again at once, without files: the text is answered all the same.
                    refused = self._learn(request, media, files.message)
                    media = {}
                    system, messages = build_request(request.context, media)
                    continue
            except httpx2.RequestError as error:
                # Once the response has begun, the SDK hands its transport's errors on
                # as they are: a connection cut or a read timeout in the middle.
                failed += reply.charged(self._tokens)
                wait = self._retry_or_raise(error, attempt, reply.streamed, request, failed)
            else:
                text = "".join(reply.parts)
                if reply.stop_reason == "max_tokens":
                    text += "\n\n(The answer was cut off at the length limit.)"
                note = ""
                if request.media or request.context.media_left_out:
                    note = self._note(request, media, refused)
                if note:
                    yield TextDelta(note)
                    text += note
                yield AgentReply(
                    text,
                    self._pricing.priced(request.model, failed + reply.usage()),
                    reply.model,
                    reply.prompt_tokens,
                )
                return
            attempt += 1
            log.warning("Claude call failed (attempt %d); retrying in %.1f s", attempt, wait)
            await asyncio.sleep(wait)

    def _retry_or_raise(
        self,
        error: Exception,
        attempt: int,
        streamed: bool,
        request: AgentRequest,
        failed: Usage,
        files: bool = False,
    ) -> float:
        """Seconds to wait before the next attempt, or the AgentError for the user,
        carrying what the failed attempts were charged."""
        try:
            if isinstance(error, anthropic.APIStatusError):
                return self._classify_status(error, attempt, streamed, files)
            return self._classify_network(error, attempt, streamed)
        except AgentError as give_up:
            if failed != Usage():
                give_up.usage = self._pricing.priced(request.model, failed)
            raise

    def _backoff(self, attempt: int) -> float:
        base: float = self._settings.retry_base_delay_s * 2.0**attempt
        return min(self._settings.retry_max_wait_s, base * (0.5 + random.random()))

    def _learn(self, request: AgentRequest, media: Mapping[str, str], message: str) -> str:
        """Remember what a 400 about files says: the model cannot read files, or these
        files cannot be read. Returns the API's reason, for the user."""
        if about_the_model(message):
            log.warning("%s refused files (%s): sending it text only", request.model, message)
            self._text_only.add(request.model)
        else:
            log.warning("Claude refused files (%s): not sending them again", message)
            self._refused.update(media)
        return message[:200]

    def _classify_status(
        self, error: anthropic.APIStatusError, attempt: int, streamed: bool, files: bool = False
    ) -> float:
        """Seconds to wait before retrying, or raise AgentError for the user (or
        _FilesRefused: a request with ``files`` that the API refused for them)."""
        status = _status(error)
        if status == 401 or status == 403:
            if not self._auth_logged:
                self._auth_logged = True
                log.error(
                    "Anthropic rejected the API key (HTTP %d): check ANTHROPIC_API_KEY", status
                )
            raise AgentError(
                "I can't reach Claude: the bot's API key was rejected. The operator needs to "
                "fix it; your message is saved.",
                kind="auth",
                detail=f"HTTP {status}",
            )
        if status == 400:
            match = _TOO_LONG.search(str(error.message))
            if match:
                raise PromptTooLong(int(match.group(1)), str(error.message))
            reason = files_refused(error) if files and not streamed else None
            if reason is not None:
                raise _FilesRefused(reason)
            raise AgentError(
                "Claude could not take this request. Your message is saved; try rephrasing it.",
                kind="bad_request",
                detail=str(error.message)[:300],
            )
        if status == 404:
            raise AgentError(
                "The configured model was not found; the operator needs to check it.",
                kind="model_not_found",
                detail=str(error.message)[:300],
            )
        retryable = status in (408, 409, 429) or status >= 500
        if not retryable or streamed or attempt >= self._settings.max_retries:
            raise self._give_up(status, error, streamed)
        wait = _retry_after(error) if status == 429 else None
        if wait is not None and wait > self._settings.retry_max_wait_s:
            raise AgentError(
                f"Claude is rate-limiting this bot; please try again in about {round(wait)} s.",
                kind="rate_limited",
                detail=f"retry-after {wait}",
            )
        return wait if wait is not None else self._backoff(attempt)

    def _give_up(self, status: int, error: Exception, streamed: bool) -> AgentError:
        if streamed:
            return AgentError(
                "The answer broke off midway (Claude's side). Your message is saved; "
                "please ask again.",
                kind="stream_broken",
                detail=f"HTTP {status}: {error}"[:300],
            )
        if status == 429:
            return AgentError(
                "Claude is rate-limiting this bot right now; please try again in a minute.",
                kind="rate_limited",
                detail=str(error)[:300],
            )
        if status == 529:
            return AgentError(
                "Claude is overloaded right now. Your message is saved; please try again "
                "in a little while.",
                kind="overloaded",
                detail=str(error)[:300],
            )
        return AgentError(
            "Claude had a problem answering. Your message is saved; please try again.",
            kind="api_error",
            detail=f"HTTP {status}: {error}"[:300],
        )

    def _classify_network(self, error: Exception, attempt: int, streamed: bool) -> float:
        timeout = isinstance(error, anthropic.APITimeoutError | httpx2.TimeoutException)
        if timeout and (streamed or attempt >= self._settings.max_retries):
            raise AgentError(
                "Claude took too long to answer. Your message is saved; please try again.",
                kind="timeout",
                detail=type(error).__name__,
            )
        if streamed:
            raise AgentError(
                "The answer broke off midway (the connection to Claude was cut). Your "
                "message is saved; please ask again.",
                kind="stream_broken",
                detail=f"{type(error).__name__}: {error}"[:300],
            )
        if attempt >= self._settings.max_retries:
            raise AgentError(
                "I couldn't connect to Claude. Your message is saved; please try again.",
                kind="connection",
                detail=type(error).__name__,
            )
        return self._backoff(attempt)
