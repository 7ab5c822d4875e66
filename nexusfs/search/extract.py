"""Text of a file for semantic indexing: plain text, PDF (pypdfium2) and DOCX (python-docx).

Lines are what grep counts: text separated by ``\\n``, so that line numbers agree with
``grep -n``. CRLF becomes ``\\n``; a lone CR (classic Mac OS), which grep does not count as a
line break, becomes a space.
A file is binary, as grep judges it, when it holds a NUL byte; PDF and DOCX files we can parse
are the exception. Text that is not valid UTF-8 is read as Windows-1252/Latin-1 when it
still looks like text (few control bytes), and is otherwise binary.

PDF pages are joined by a line holding only a form feed, so each page starts on a new line and
a chunker sees a blank line between pages. DOCX paragraphs become lines, table rows become
lines of tab-separated cells.

Nothing here raises on bad input: a file that cannot be read as text gives ``None``.
"""

from __future__ import annotations

import io
import logging
import threading
import zipfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: At most this many characters of text are returned; ``Extracted.truncated`` says when cut.
MAX_TEXT_CHARS = 4 * 1024 * 1024
#: A plain-text file's first this many bytes hold at least MAX_TEXT_CHARS characters (UTF-8
#: needs at most 4 bytes a character): a caller need not read further (see ``sniff``).
TEXT_READ_LIMIT = 4 * MAX_TEXT_CHARS

PDF_MAGIC = b"%PDF-"
ZIP_MAGIC = b"PK\x03\x04"
#: PDF readers accept junk before the header; this is how far we look for it.
_PDF_MAGIC_WINDOW = 1024
#: Bytes 0x00-0x1f and 0x7f that plain text may contain: \t \n \v \f \r and ESC (colour codes).
_TEXT_CONTROLS = frozenset(b"\t\n\x0b\x0c\r\x1b")
_CONTROL_BYTES = bytes(b for b in [*range(0x20), 0x7F] if b not in _TEXT_CONTROLS)
#: Most that a legacy-8-bit file may hold of control bytes and of bytes >= 0x80, as fractions.
_MAX_CONTROL_FRACTION = 0.005
_MAX_HIGH_FRACTION = 0.30

#: PDFium is not thread-safe, not even across documents: every call into it holds this lock.
PDFIUM_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Extracted:
    """The indexable text of one file."""

    text: str
    kind: str  # 'text', 'pdf' or 'docx'
    truncated: bool  # the file has more text than MAX_TEXT_CHARS; ``text`` is its beginning


def sniff(head: bytes, name: str = "") -> str:
    """How to read a file, from its first bytes (a few KiB) and name.

    'pdf' or 'docx': pass the whole file to ``extract_text``; 'text': its first
    ``TEXT_READ_LIMIT`` bytes are enough; 'binary': nothing to index (a NUL byte, as grep
    judges). A ZIP archive counts as DOCX only by its name here, so that a large archive is
    not read in full just to look inside it.
    """
    if _looks_like_pdf(head):
        return "pdf"
    if head.startswith(ZIP_MAGIC):
        return "docx" if name.lower().endswith(".docx") else "binary"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "text"  # UTF-16 with a byte-order mark: NUL bytes are expected
    return "binary" if b"\x00" in head else "text"


def extract_text(
    data: bytes, name: str = "", max_chars: int = MAX_TEXT_CHARS, partial: bool = False
) -> Extracted | None:
    """The text of a file's content ``data`` (``name`` is only a hint), or None.

    None means: binary, empty or whitespace only, or a PDF/DOCX that could not be parsed.
    ``partial`` says that ``data`` is only the beginning of a longer plain-text file: the
    result is then marked truncated and its last, possibly cut, line is dropped.
    """
    lname = name.lower()
    if _looks_like_pdf(data):
        got = _pdf_text(data, max_chars)
        if got is not None or lname.endswith(".pdf"):
            return got
        # a text file that merely starts with "%PDF-" falls through to plain text
    elif data.startswith(ZIP_MAGIC) and (lname.endswith(".docx") or _is_docx(data)):
        return _docx_text(data, max_chars)
    return _plain_text(data, max_chars, partial)


# ------------------------------------------------------------------ plain text


def _plain_text(data: bytes, max_chars: int, partial: bool) -> Extracted | None:
    cut = partial
    text = _decode_utf16_bom(data)
    if text is None:
        if b"\x00" in data:
            return None
        # decoding past the cap is wasted work: one char takes at most 4 bytes
        if len(data) > 4 * max_chars:
            cut = True
            data = data[: 4 * max_chars]
        if cut:
            data = _cut_utf8(data)
        text = _decode_8bit(data)
        if text is None:
            return None
    if text.startswith("\ufeff"):
        text = text[1:]
    text = _normalise_newlines(text)
    if cut and "\n" in text:
        text = text[: text.rfind("\n") + 1]  # the last line may go on past the cut
    text, more = _cap(text, max_chars)
    if not text.strip():
        return None
    return Extracted(text, "text", cut or more)


def _decode_utf16_bom(data: bytes) -> str | None:
    """UTF-16 text with a byte-order mark (Windows tools write it); None for anything else."""
    if not data.startswith((b"\xff\xfe", b"\xfe\xff")) or len(data) % 2:
        return None
    try:
        text = data.decode("utf-16")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def _decode_8bit(data: bytes) -> str | None:
    """UTF-8, else Windows-1252/Latin-1 if the bytes look like text, else None (binary)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    n = len(data) or 1
    controls = n - len(data.translate(None, _CONTROL_BYTES))
    high = n - len(data.translate(None, bytes(range(0x80, 0x100))))
    if controls / n > _MAX_CONTROL_FRACTION or high / n > _MAX_HIGH_FRACTION:
        return None
    try:
        return data.decode("cp1252")  # Latin-1 plus curly quotes and dashes in 0x80-0x9f
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _cut_utf8(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut in half at its end."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return data
        if b >= 0xC0:  # lead byte: keep it only if its whole sequence is there
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data


def _normalise_newlines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", " ")
    return text


def _cap(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` (at a line end when there is one), and whether it was cut."""
    if len(text) <= max_chars:
        return text, False
    text = text[:max_chars]
    nl = text.rfind("\n")
    if nl > 0:
        text = text[: nl + 1]
    return text, True


# ------------------------------------------------------------------ PDF


def _looks_like_pdf(data: bytes) -> bool:
    return PDF_MAGIC in data[:_PDF_MAGIC_WINDOW]


def _pdf_text(data: bytes, max_chars: int) -> Extracted | None:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        log.debug("pypdfium2 is not installed: PDF files are not indexed")
        return None
    pages: list[str] = []
    size = 0
    truncated = False
    try:
        with PDFIUM_LOCK:
            pdf = pdfium.PdfDocument(data)
            try:
                for i in range(len(pdf)):
                    if size >= max_chars:
                        truncated = True
                        break
                    page = pdf[i]
                    try:
                        textpage = page.get_textpage()
                        try:
                            page_text = textpage.get_text_range()
                        finally:
                            textpage.close()
                    finally:
                        page.close()
                    page_text = _normalise_newlines(page_text.replace("\x00", "")).strip("\n")
                    pages.append(page_text)
                    size += len(page_text) + 3
            finally:
                pdf.close()
    except Exception as exc:  # pdfium raises PdfiumError, ctypes errors, ...
        log.debug("cannot read PDF: %s", exc)
        return None
    text, cut = _cap("\n\f\n".join(pages), max_chars)
    if not text.strip():
        return None  # a scanned PDF without a text layer
    return Extracted(text, "pdf", truncated or cut)


# ------------------------------------------------------------------ DOCX


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return "word/document.xml" in zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _docx_text(data: bytes, max_chars: int) -> Extracted | None:
    try:
        import docx
        from docx.table import Table
    except ImportError:
        log.debug("python-docx is not installed: DOCX files are not indexed")
        return None
    lines: list[str] = []
    size = 0
    truncated = False
    try:
        document = docx.Document(io.BytesIO(data))
        for block in document.iter_inner_content():
            if size >= max_chars:
                truncated = True
                break
            if isinstance(block, Table):
                new = [_table_row(row) for row in block.rows]
            else:
                new = [block.text]
            for line in new:
                line = _normalise_newlines(line).replace("\x00", "")
                lines.append(line)
                size += len(line) + 1
    except Exception as exc:  # python-docx raises KeyError, lxml errors, BadZipFile, ...
        log.debug("cannot read DOCX: %s", exc)
        return None
    text, cut = _cap("\n".join(lines), max_chars)
    if not text.strip():
        return None
    return Extracted(text, "docx", truncated or cut)


def _table_row(row) -> str:
    cells = []
    seen = set()
    for cell in row.cells:
        # a merged cell appears once per grid column it spans
        if id(cell._tc) in seen:
            continue
        seen.add(id(cell._tc))
        cells.append(" ".join(p.text for p in cell.paragraphs).replace("\n", " ").strip())
    return "\t".join(cells)
