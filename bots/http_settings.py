"""The ``[http]`` settings: the operator surface's server (REST, Socket.IO, metrics,
health). The admin token is a secret: it comes only from PALAVER_ADMIN_TOKEN."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1, max_length=255)
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    max_page_size: int = Field(500, ge=1, le=10_000)
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)
    max_import_bytes: int = Field(256 << 20, ge=1024, le=1 << 34)
    live_queue: int = Field(10_000, ge=10, le=10_000_000)
    live_client_backlog: int = Field(1000, ge=1, le=1_000_000)
    chat_wait_for_missed_s: float = Field(10.0, ge=0, le=300)
