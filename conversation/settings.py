"""Settings the conversation core takes: plain pydantic models, filled in by bots/config.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSettings(_Section):
    system_prompt: str = Field(
        "You are Palaver, a helpful assistant in a chat. Answer clearly and concisely.",
        min_length=1,
        max_length=20_000,
    )
    model: str = Field("claude-sonnet-4-6", min_length=1)
    max_tokens: int = Field(1024, ge=1, le=64_000)
    context_window: int = Field(200_000, ge=1000)


class AccessSettings(_Section):
    allowed_users: list[str] = Field(default_factory=list)
    allowed_chats: list[str] = Field(default_factory=list)
    allowed_guilds: list[str] = Field(default_factory=list)
    allowed_roles: list[str] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list)
    allow_everyone: bool = False


class RateLimitSettings(_Section):
    per_minute: float = Field(20.0, gt=0)
    burst: int = Field(5, ge=1)


TEXT_EXTENSIONS = [
    *("txt", "md", "markdown", "rst", "log", "csv", "tsv", "json", "jsonl", "yaml", "yml"),
    *("toml", "ini", "cfg", "conf", "xml", "html", "css", "py", "js", "ts", "tsx", "jsx"),
    *("java", "kt", "c", "h", "cpp", "hpp", "cs", "go", "rs", "rb", "php", "sh", "sql"),
    *("swift", "r", "tex", "diff", "patch"),
]


class AttachmentSettings(_Section):
    """Files sent to the bot, on every interface.

    The image defaults are the Messages API's: it scales an image down itself past a
    long edge of 1568 px or about 1.15 megapixels (so sending more costs latency and
    buys nothing), and refuses one whose base64 passes 5 MB (3.75 MB of bytes). PDFs:
    the API reads up to 100 pages per request; each page costs about 1,500-3,000
    tokens of text plus the page as an image (Anthropic measured ~7,000 tokens for a
    3-page PDF), hence 2,500 tokens a page as the estimate the budget counts.
    """

    text_extensions: list[str] = Field(default_factory=lambda: list(TEXT_EXTENSIONS))
    max_text_bytes: int = Field(50_000, ge=0, le=20_000_000)
    # Read as images (JPEG, PNG, GIF, WebP) and PDFs; off: named, never downloaded.
    read_images: bool = True
    read_pdfs: bool = True
    # Larger files are not downloaded at all (Telegram's bots cannot fetch over 20 MB).
    max_download_bytes: int = Field(20_000_000, ge=1, le=200_000_000)
    image_max_edge: int = Field(1568, ge=200, le=8000)
    image_max_megapixels: float = Field(1.15, gt=0.04, le=64)
    image_max_bytes: int = Field(3_750_000, ge=100_000, le=3_750_000)
    # Refused before decoding: more pixels than this is a decompression bomb, not a photo.
    image_max_pixels: int = Field(50_000_000, ge=1_000_000, le=89_000_000)
    pdf_max_bytes: int = Field(10_000_000, ge=1000, le=32_000_000)
    pdf_max_pages: int = Field(20, ge=1, le=100)
    pdf_tokens_per_page: int = Field(2500, ge=100, le=10_000)
    # What the database keeps: one file, and all the files of one session.
    store_max_bytes: int = Field(10_000_000, ge=100_000)
    session_max_bytes: int = Field(100_000_000, ge=100_000)
    # Parts of a Telegram album arrive as separate messages: gathered for this long.
    album_wait_s: float = Field(1.0, ge=0, le=10)
    max_files_per_message: int = Field(10, ge=1, le=20)

    @model_validator(mode="after")
    def _consistent(self) -> AttachmentSettings:
        if self.store_max_bytes > self.session_max_bytes:
            raise ValueError("store_max_bytes must not exceed session_max_bytes")
        return self
