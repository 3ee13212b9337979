"""Which attachments are read as text, and how (conversation.attachments, every interface)."""

from __future__ import annotations

from conversation.attachments import TextFiles, decode_text, file_block
from conversation.settings import TEXT_EXTENSIONS


def test_text_is_known_by_content_type_or_by_name() -> None:
    files = TextFiles(["py", ".MD"])
    assert files.is_text("notes.bin", "text/plain; charset=utf-8")
    assert files.is_text("data", "application/x-ndjson")
    assert files.is_text("Script.PY", None)
    assert files.is_text("README.md", "application/octet-stream")
    assert not files.is_text("cat.png", "image/png")
    assert not files.is_text("archive.zip", None)


def test_a_name_without_suffix_can_be_listed_whole() -> None:
    files = TextFiles(["dockerfile", "txt"])
    assert files.is_text("Dockerfile", None)
    assert not files.is_text("Makefile", None)
    assert TextFiles(TEXT_EXTENSIONS).is_text("main.py", None)


def test_only_utf8_text_decodes() -> None:
    assert decode_text("\ufeffgrüße\n".encode()) == "grüße\n"  # the BOM goes
    assert decode_text(b"\xff\xfe\x00a") is None
    assert decode_text(b"text\x00with a NUL") is None
    assert decode_text(b"") == ""


def test_a_file_block_names_the_file_and_trims_the_end() -> None:
    assert file_block("a.md", "# A\n\n\n") == '<file name="a.md">\n# A\n</file>'
