"""Images and PDFs made fit for the model (conversation.images, conversation.pdfs), the
reader's choices and wording (conversation.attachments), albums, and uploads for
Claude Code projects (agents.uploads)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest
from PIL import Image

from agents.uploads import describe_uploads, safe_name, write_uploads
from agents.workspace import WorkspaceError
from conversation.access import Actor
from conversation.albums import Albums
from conversation.attachments import AttachmentReader, ReadFiles
from conversation.images import ImageLimits, ImageRefused, fit_image, target_size
from conversation.inbound import Attachment, Inbound
from conversation.pdfs import PdfRefused, read_pdf
from conversation.settings import AttachmentSettings
from memory.attachments import NewAttachment
from memory.types import ChatKey
from tests.media import bomb_png, format_of, image, jpeg, pdf, png, size_of

LIMITS = ImageLimits(max_edge=1568, max_megapixels=1.15, max_bytes=3_750_000, max_pixels=50_000_000)


def offered(
    name: str,
    data: bytes,
    content_type: str | None,
    *,
    kind: str = "file",
    downloads: list[str] | None = None,
    size: int | None = None,
    width: int | None = None,
    height: int | None = None,
) -> Attachment:
    async def fetch() -> bytes:
        if downloads is not None:
            downloads.append(name)
        return data

    return Attachment(
        name,
        kind,
        content_type,
        len(data) if size is None else size,
        fetch,
        width=width,
        height=height,
    )


# -- images ----------------------------------------------------------------------------


def test_an_image_within_the_limits_is_sent_as_it_came() -> None:
    data = png(800, 600)
    fit = fit_image(data, LIMITS)
    assert (fit.data, fit.media_type, fit.width, fit.height, fit.scaled) == (
        data,
        "image/png",
        800,
        600,
        False,
    )
    assert fit.tokens == 640  # 800 x 600 / 750, the API's formula


def test_a_large_photo_is_scaled_to_the_apis_long_edge_and_pixel_count() -> None:
    fit = fit_image(jpeg(4032, 3024), LIMITS)
    assert fit.scaled and fit.media_type == "image/jpeg"
    assert (fit.width, fit.height) == size_of(fit.data) == target_size(4032, 3024, LIMITS)
    assert max(fit.width, fit.height) <= 1568 and fit.width * fit.height <= 1_150_000
    assert abs(fit.width / fit.height - 4032 / 3024) < 0.01  # the shape is kept
    assert fit.tokens <= 1534


def test_screenshots_stay_lossless_and_transparency_is_kept() -> None:
    fit = fit_image(png(2560, 1440, alpha=True), LIMITS)
    assert fit.media_type == "image/png" and format_of(fit.data) == "PNG"
    assert max(fit.width, fit.height) <= 1568


def test_an_image_over_the_byte_limit_is_re_encoded_until_it_fits() -> None:
    noisy = png(1000, 1000, noise=True)  # noise: ~3 MB as PNG
    small = ImageLimits(max_edge=1568, max_megapixels=1.15, max_bytes=400_000, max_pixels=10**8)
    fit = fit_image(noisy, small)
    assert len(noisy) > small.max_bytes >= len(fit.data)
    assert fit.scaled and size_of(fit.data) == (fit.width, fit.height)


def test_a_decompression_bomb_is_refused_before_any_pixel_is_decoded() -> None:
    bomb = bomb_png(60_000, 60_000)
    assert len(bomb) < 200_000
    with pytest.raises(ImageRefused, match="more pixels than I open"):
        fit_image(bomb, LIMITS)  # Pillow's own guard, at twice its warning threshold
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(ImageRefused, match=r"10,000x10,000 pixels is more than I open"),
    ):
        fit_image(bomb_png(10_000, 10_000), LIMITS)
    # Just over our limit, below Pillow's: refused by the header check all the same.
    with pytest.raises(ImageRefused, match="8,000x6,251 pixels is more than I open: 50 megapixels"):
        fit_image(bomb_png(8000, 6251), LIMITS)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x89PNG\r\n\x1a\nthis is not an image at all", "not an image I can read"),
        (b"just some text", "not an image I can read"),
        (image(64, 64, "BMP"), "not an image I can read"),  # a format the API does not take
        (image(64, 64, "TIFF"), "not an image I can read"),
        (jpeg(640, 480)[:2000], "damaged or incomplete"),  # cut off in transfer
    ],
)
def test_files_that_claim_to_be_images_and_are_not_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRefused, match=reason):
        fit_image(data, LIMITS)


# -- PDFs ------------------------------------------------------------------------------


def test_pdf_pages_are_counted_and_the_limits_say_what_is_wrong() -> None:
    assert read_pdf(pdf(3), 20).pages == 3
    with pytest.raises(PdfRefused, match="25 pages; I read PDFs of up to 20 pages"):
        read_pdf(pdf(25), 20)
    with pytest.raises(PdfRefused, match="encrypted or password-protected"):
        read_pdf(pdf(1, encrypted=True), 20)
    with pytest.raises(PdfRefused, match="not a PDF"):
        read_pdf(b"PK\x03\x04 a zip file", 20)
    with pytest.raises(PdfRefused, match="damaged"):
        read_pdf(b"%PDF-1.7\n" + os.urandom(3000), 20)


# -- the reader --------------------------------------------------------------------------


async def test_the_reader_sends_images_and_pdfs_and_names_them_in_the_text() -> None:
    reader = AttachmentReader(AttachmentSettings())
    read = await reader.read(
        [
            offered("a photo", jpeg(2000, 1500), "image/jpeg", kind="photo"),
            offered("report.pdf", pdf(2), "application/pdf"),
            offered("notes.md", b"# Notes", "text/markdown"),
            offered("sticker", b"RIFF", "image/webp", kind="sticker"),
        ]
    )
    photo, report = read.media
    assert (photo.name, photo.kind, photo.media_type) == ("photo.jpg", "image", "image/jpeg")
    assert (report.name, report.pages, report.tokens) == ("report.pdf", 2, 5000)
    assert read.refused == ("sticker (not an image I can read: I read JPEG, PNG, GIF and WebP)",)
    assert read.text("what are these?") == (
        'what are these?\n\n<file name="notes.md">\n# Notes\n</file>\n\n'
        f"[image: photo.jpg, {photo.width}x{photo.height}]\n[PDF: report.pdf, 2 pages]"
    )


async def test_nothing_too_large_is_downloaded_and_photos_take_the_largest_size_that_fits() -> None:
    settings = AttachmentSettings(max_download_bytes=1_000_000, pdf_max_bytes=500_000)
    reader = AttachmentReader(settings)
    downloads: list[str] = []
    huge = offered("huge.png", b"", "image/png", size=30_000_000, downloads=downloads)
    big_pdf = offered("big.pdf", b"", "application/pdf", size=600_000, downloads=downloads)
    read = await reader.read([huge, big_pdf])
    assert downloads == [] and read.media == ()
    assert read.refused == (
        "huge.png (too large: 30 MB)",
        "big.pdf (too large: 0.6 MB; I read PDFs up to 0.5 MB)",
    )
    sizes = [
        offered(
            f"{edge}px",
            jpeg(edge, edge),
            "image/jpeg",
            kind="photo",
            downloads=downloads,
            size=size,
            width=edge,
            height=edge,
        )
        for edge, size in ((2560, 2_000_000), (1280, 400_000), (320, 20_000))
    ]
    photo = dataclasses.replace(sizes[0], smaller=tuple(sizes[1:]))
    [taken] = (await reader.read([photo])).media
    assert downloads == ["1280px"]  # 2560 px is over the download limit, 320 px is smaller
    assert (taken.width, taken.height) == target_size(1280, 1280, reader.limits) == (1072, 1072)


async def test_a_session_keeps_files_up_to_its_limit_counting_each_file_once() -> None:
    reader = AttachmentReader(
        AttachmentSettings(session_max_bytes=1_000_000, store_max_bytes=1_000_000)
    )
    one = NewAttachment.of("a.png", "image", "image/png", b"a" * 300_000, 400)
    two = NewAttachment.of("b.png", "image", "image/png", b"b" * 300_000, 400)
    read = ReadFiles((), (), (one, two))
    assert reader.within_quota(read, 300_000, frozenset()) is read
    # Already kept: free; a new one over the limit is named, with what to do.
    kept = reader.within_quota(read, 800_000, frozenset({one.sha256}))
    assert kept.media == (one,)
    assert kept.refused == (
        "b.png (this conversation already keeps 0.8 MB of files, and 1 MB is its limit: "
        "/reset starts a new one)",
    )


def test_the_refusal_says_what_the_bot_can_read() -> None:
    note = AttachmentReader(AttachmentSettings()).refusal(["a voice message"])
    assert note == (
        "I skipped a voice message: I can read messages, captions, text files (.txt, .md, "
        ".py, .json, .csv and other plain text, UTF-8, up to 50 KB), images (JPEG, PNG, GIF, "
        "WebP) and PDFs (up to 20 pages and 10 MB). Audio, video and other files aren't "
        "supported: please describe them in words."
    )
    off = AttachmentReader(AttachmentSettings(read_images=False, read_pdfs=False))
    assert "Images, audio, video and other files aren't supported" in off.refusal(["x"])


async def test_at_most_so_many_files_of_a_message_are_read() -> None:
    reader = AttachmentReader(AttachmentSettings(max_files_per_message=2))
    read = await reader.read([offered(f"{i}.png", png(20, 20), "image/png") for i in range(3)])
    assert [a.name for a in read.media] == ["0.png", "1.png"]
    assert read.refused == ("2.png (I read 2 files of a message at most)",)


# -- albums ------------------------------------------------------------------------------


async def test_an_albums_parts_become_one_message_with_every_file() -> None:
    albums = Albums(wait=0.2)
    key = ChatKey("telegram", "1")
    actor = Actor("telegram", "1", "Ann")
    parts = [
        Inbound(
            key,
            actor,
            "look at these" if i == 0 else "",
            str(10 + i),
            album="G",
            attachments=(Attachment(f"p{i}", "photo"),),
            addressed=i == 1,
        )
        for i in range(3)
    ]
    assert albums.join(parts[0]) is False
    gathering = asyncio.create_task(albums.gather(parts[0]))
    await asyncio.sleep(0.1)
    assert albums.join(parts[1]) and albums.join(parts[2])
    album = await gathering
    assert album.text == "look at these" and album.message_id == "10" and album.addressed
    assert [a.name for a in album.attachments] == ["p0", "p1", "p2"]
    # Closed: a late part starts an album of its own.
    assert albums.join(parts[2]) is False
    assert await albums.gather(parts[2]) is parts[2]


# -- uploads for Claude Code -------------------------------------------------------------


def test_uploads_get_safe_names_inside_the_folder_and_never_overwrite(tmp_path: Path) -> None:
    class File:
        def __init__(self, name: str, data: bytes) -> None:
            self.name, self.data = name, data

    files = [
        File("photo.jpg", b"1"),
        File("photo.jpg", b"2"),
        File("../../etc/passwd", b"3"),
        File(".bashrc", b"4"),
        File("C:\\Users\\x\\evil.pdf", b"5"),
        File("a\x00b:c*?.png", b"6"),
        File("..", b"7"),
    ]
    paths = write_uploads(tmp_path, files)
    uploads = tmp_path / "uploads"
    assert [p.name for p in paths] == [
        "photo.jpg",
        "photo-2.jpg",
        "passwd",
        "bashrc",
        "evil.pdf",
        "a_b_c_.png",
        "file",
    ]
    assert all(p.parent == uploads for p in paths)
    assert [p.read_bytes() for p in paths] == [f.data for f in files]
    assert not (tmp_path.parent / "etc").exists()
    again = write_uploads(tmp_path, [File("photo.jpg", b"9")])
    assert again == [uploads / "photo-3.jpg"] and (uploads / "photo.jpg").read_bytes() == b"1"
    assert describe_uploads(paths[:2], tmp_path) == (
        "[The user sent files, saved in the project as: uploads/photo.jpg, uploads/photo-2.jpg]"
    )
    assert len(safe_name("x" * 500 + ".png")) == 120 and safe_name("x" * 500).endswith("x")


def test_an_uploads_folder_replaced_by_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / "uploads").symlink_to(outside)

    class File:
        name, data = "a.png", b"x"

    with pytest.raises(WorkspaceError, match="not a plain directory"):
        write_uploads(project, [File()])
    assert list(outside.iterdir()) == []
