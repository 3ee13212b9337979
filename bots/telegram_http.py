"""python-telegram-bot's HTTP transport on aiohttp instead of httpx.

PTB's default transport is httpx, which costs several milliseconds of CPU per Bot API call
and gets slower as more requests are in flight (its connection pool scans every
connection for every request: encode/httpx#3215). A bot answering hundreds of chats at
once makes two or three calls per turn on one event loop, so that cost is the ceiling of
its throughput. Measured against the fake Bot API on the benchmark machine (bench/
telegram_turns.py), one sendMessage through PTB took 4.3 ms of CPU with httpx and 8.9 ms
with 50 in flight, against well under 1 ms through aiohttp. aiohttp is already a Palaver
dependency; ``telegram.http_client = "httpx"`` switches back to PTB's own transport
(needed for HTTP/2).

Parameters go as a JSON body (multipart when files are attached); errors map to the same
PTB exceptions as PTB's own transport (TimedOut, NetworkError). Proxy variables from the
environment (HTTPS_PROXY) are not used: aiohttp would look them up in a thread on every
request; a bot that needs a proxy uses ``http_client = "httpx"``.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData


def _value(option: Any, default: float | None) -> float | None:
    """A PTB timeout argument: DEFAULT_NONE means "this transport's default"."""
    if option is BaseRequest.DEFAULT_NONE:
        return default
    return float(option) if option is not None else None


class AiohttpRequest(BaseRequest):
    """A ``BaseRequest`` over one ``aiohttp.ClientSession`` with a bounded pool."""

    def __init__(
        self,
        connection_pool_size: int = 256,
        *,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 30.0,
        media_write_timeout: float | None = 20.0,
        trace: aiohttp.TraceConfig | None = None,
    ) -> None:
        self._trace = [trace] if trace is not None else None  # counts errors and 429s
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0)
            # No trust_env: aiohttp would look proxies up in a thread on every request.
            self._session = aiohttp.ClientSession(connector=connector, trace_configs=self._trace)

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = BaseRequest.DEFAULT_NONE,
        write_timeout: Any = BaseRequest.DEFAULT_NONE,
        connect_timeout: Any = BaseRequest.DEFAULT_NONE,
        pool_timeout: Any = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = None
        if request_data is not None and request_data.contains_files:
            files = request_data.multipart_data
        default_write = self._media_write_timeout if files else self._write_timeout
        read = _value(read_timeout, self._read_timeout)
        write = _value(write_timeout, default_write)
        connect = _value(connect_timeout, self._connect_timeout)
        pool = _value(pool_timeout, self._pool_timeout)
        # aiohttp's ``connect`` covers waiting for a pooled connection plus connecting.
        waiting = None if pool is None or connect is None else pool + connect
        # No separate write timeout in aiohttp: a slow upload counts against the read one.
        sock_read = None if read is None else read + (write or 0.0)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=waiting, sock_connect=connect, sock_read=sock_read
        )
        headers = {"User-Agent": self.USER_AGENT}
        body: aiohttp.FormData | bytes | None = None
        if request_data is not None:
            if files:
                form = aiohttp.FormData()
                for name, value in request_data.json_parameters.items():
                    form.add_field(name, value)
                for name, (filename, content, mime_type) in files.items():
                    form.add_field(name, content, filename=filename, content_type=mime_type)
                body = form
            else:  # a JSON body: the cheapest to build, and the Bot API takes it
                body = request_data.json_payload
                headers["Content-Type"] = "application/json"
        try:
            async with session.request(
                method, url, data=body, timeout=timeout, headers=headers
            ) as response:
                return response.status, await response.read()
        except TimeoutError as error:
            raise TimedOut from error
        except aiohttp.ClientError as error:
            raise NetworkError(f"aiohttp.{error.__class__.__name__}: {error}") from error
