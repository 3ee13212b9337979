"""PDFs a user sent: checked and their pages counted, before they go to the model.

The Messages API reads a PDF as a document block (its text and each page as an
image) up to 100 pages per request, and no encrypted ones. Pages are counted with
pypdf (pure Python, no native code), which also proves the file is a PDF it can
parse: a file that only claims to be one is refused here, with a plain reason,
instead of failing the model call.

Blocking: call it in a worker thread.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from pypdf import PdfReader

log = logging.getLogger(__name__)


class PdfRefused(Exception):
    """A PDF that cannot be sent; ``reason`` says why, in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FitPdf:
    data: bytes
    pages: int


def read_pdf(data: bytes, max_pages: int) -> FitPdf:
    """``data`` as a PDF fit to send; raises PdfRefused with the reason if not."""
    if b"%PDF-" not in data[:1024]:  # the header may follow up to 1 KB of junk
        raise PdfRefused("not a PDF")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise PdfRefused("the PDF is encrypted or password-protected")
        pages = len(reader.pages)
    except PdfRefused:
        raise
    except Exception as error:  # pypdf reports damaged files in many ways
        log.info("a PDF could not be read: %r", error)
        raise PdfRefused("the PDF is damaged: I couldn't read its pages") from None
    if pages < 1:
        raise PdfRefused("the PDF has no pages")
    if pages > max_pages:
        raise PdfRefused(f"{pages} pages; I read PDFs of up to {max_pages} pages")
    return FitPdf(data, pages)
