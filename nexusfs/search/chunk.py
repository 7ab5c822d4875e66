"""Cut text into chunks for embedding, each naming the lines it covers.

A chunk is a run of whole lines (lines are separated by ``\\n`` only, as grep counts them), at
most ``max_chars`` long. Cuts fall where the text itself breaks. A chunk ends at the first blank
line after it reaches ``target_chars``, and before a new section (a heading, or a top-level
definition, decorator or comment after a blank line) once it holds half of that. When a
paragraph or function runs past ``max_chars``, the cut goes, by preference, at a blank line,
before a heading or a line that returns to the left margin (the next definition in code), and
only then between two ordinary lines. A line longer than ``max_chars`` (minified code, a
paragraph without line breaks) is split at spaces into pieces; each piece is a chunk, or part
of one, whose line range is that one line.

Blank lines at the edges of a chunk are left out of it, so a range such as ``notes.md:12-30``
starts and ends on text. Every line that is not blank is in exactly one chunk; with
``overlap_lines`` > 0 a chunk cut in the middle of a paragraph also repeats the previous
chunk's last lines (the measurement in tests/bench/eval_semantic.py decides the default).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

#: Defaults picked by tests/bench/eval_semantic.py (tests/bench/semantic_corpus/RESULTS.md).
TARGET_CHARS = 600
MAX_CHARS = 1000
OVERLAP_LINES = 0
#: Start a new chunk at a heading or top-level definition once the chunk is half the target.
SECTION_BREAKS = True
#: A chunk whose text, whitespace runs squeezed, zlib compresses to less than this share of
#: its length is nothing but repetition (a file of one repeated character, ruler lines): it
#: says nothing to rank. Measured on the 36k chunks of CPython's Lib/: none below 0.13; one
#: character or a short pattern repeated: 0.02-0.03; a sentence repeated 22 times: 0.064.
DEGENERATE_RATIO = 0.05

# How good a cut is, by what follows it (higher is better).
_CUT_INSIDE_LINE = 0  # between two pieces of one long line
_CUT_LINE = 1  # between two ordinary lines
_CUT_SECTION = 2  # before a heading or a line back at the left margin
_CUT_BLANK = 3  # at a blank line


@dataclass(frozen=True, slots=True)
class Chunk:
    """Lines ``start_line``..``end_line`` (1-based, inclusive) of a text, or part of one line."""

    seq: int  # 0, 1, 2... in text order
    start_line: int
    end_line: int
    text: str


@dataclass(slots=True)
class _Unit:
    """A line, or a piece of a line too long to fit a chunk."""

    line_no: int
    text: str
    blank: bool
    cut_before: int  # how good a cut just before this unit is
    section: bool = False  # a heading or top-level definition after a blank line


def chunk_text(
    text: str,
    max_chars: int = MAX_CHARS,
    target_chars: int = TARGET_CHARS,
    overlap_lines: int = OVERLAP_LINES,
    section_breaks: bool = SECTION_BREAKS,
) -> list[Chunk]:
    """``text`` cut into chunks (an empty list when it holds nothing but whitespace)."""
    if max_chars < 16:
        raise ValueError("max_chars must be at least 16")
    target_chars = min(target_chars, max_chars)
    min_chars = max_chars * 2 // 5  # a forced cut keeps at least this much in the chunk
    chunks: list[Chunk] = []

    def emit(units: list[_Unit]) -> None:
        lo, hi = 0, len(units)
        while lo < hi and units[lo].blank:
            lo += 1
        while hi > lo and units[hi - 1].blank:
            hi -= 1
        if lo < hi:
            part = units[lo:hi]
            chunks.append(Chunk(len(chunks), part[0].line_no, part[-1].line_no, _join(part)))

    cur: list[_Unit] = []
    size = 0  # length of cur's text when joined
    section_chars = target_chars // 2 if section_breaks else max_chars + 1
    for unit in _units(text, max_chars):
        if unit.section and size >= section_chars:
            emit(cur)
            cur, size = [], 0
        if unit.blank and size >= target_chars:
            emit(cur)
            cur, size = [], 0
            continue
        if not cur and unit.blank:
            continue
        if cur and size + 1 + len(unit.text) > max_chars:
            while cur and size + 1 + len(unit.text) > max_chars:
                k = _best_cut(cur, unit, min_chars)
                score = cur[k].cut_before if k < len(cur) else unit.cut_before
                done, cur = cur[:k], cur[k:]
                emit(done)
                size = _size(cur)
            if overlap_lines and score != _CUT_BLANK:
                room = min(max_chars // 4, max_chars - size - len(unit.text) - 2)
                cur = _overlap(done, overlap_lines, room) + cur
                size = _size(cur)
        cur.append(unit)
        size += len(unit.text) + (1 if len(cur) > 1 else 0)
    emit(cur)
    return chunks


def meaningful_chunks(chunks: list[Chunk]) -> list[Chunk]:
    """``chunks`` without the ones that give search nothing: degenerate text (see
    DEGENERATE_RATIO) and repeats of an earlier chunk's text (each kept once, where it
    first occurs); renumbered 0, 1, 2... An 8 MiB file of one character becomes no chunk
    instead of ~4,000."""
    out: list[Chunk] = []
    seen: set[str] = set()
    for c in chunks:
        if c.text in seen or is_degenerate(c.text):
            continue
        seen.add(c.text)
        out.append(dataclasses.replace(c, seq=len(out)))
    return out


def is_degenerate(text: str) -> bool:
    """Whether ``text`` is almost only repetition (see DEGENERATE_RATIO)."""
    squeezed = " ".join(text.split()).encode("utf-8", "surrogatepass")
    return not squeezed or len(zlib.compress(squeezed, 1)) < DEGENERATE_RATIO * len(squeezed)


def _join(units: list[_Unit]) -> str:
    parts: list[str] = []
    prev = None
    for u in units:
        if prev is not None and u.line_no == prev:
            parts[-1] += u.text  # pieces of one long line join without a newline
        else:
            parts.append(u.text)
        prev = u.line_no
    return "\n".join(parts)


def _size(units: list[_Unit]) -> int:
    return sum(len(u.text) for u in units) + max(len(units) - 1, 0)


def _best_cut(cur: list[_Unit], incoming: _Unit, min_chars: int) -> int:
    """Where to end the chunk ``cur`` so that ``incoming`` can start the next one.

    Returns k: the chunk is ``cur[:k]``, and ``cur[k:]`` moves on to the next chunk. Among the
    places that leave the chunk at least ``min_chars`` long, the best kind of cut wins, and
    among equals the latest.
    """
    best_k, best_score = len(cur), incoming.cut_before
    size = 0
    for k in range(1, len(cur)):
        size += len(cur[k - 1].text) + (1 if k > 1 else 0)
        if size < min_chars:
            continue
        score = cur[k].cut_before
        if score > best_score:
            best_k, best_score = k, score
    # a later cut of the same kind as the best found keeps the chunk larger
    if incoming.cut_before >= best_score:
        return len(cur)
    return best_k


def _overlap(done: list[_Unit], lines: int, room: int) -> list[_Unit]:
    """The last ``lines`` non-blank units of a finished chunk that fit in ``room`` chars."""
    out: list[_Unit] = []
    used = 0
    for u in reversed(done):
        if u.blank or len(out) >= lines or used + len(u.text) + 1 > room:
            break
        out.insert(0, u)
        used += len(u.text) + 1
    return out


def _units(text: str, max_chars: int):
    """The lines of ``text`` as units, long lines split, each scored as a cut point."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    prev_blank = True
    prev_indent = 0
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        blank = not stripped
        if blank:
            score = _CUT_BLANK
        elif prev_blank:
            score = _CUT_BLANK
        else:
            indent = len(line) - len(line.lstrip())
            if indent == 0 and (prev_indent > 0 or _is_heading(stripped)):
                score = _CUT_SECTION
            else:
                score = _CUT_LINE
        section = prev_blank and not blank and line[:1] not in " \t" and _is_heading(stripped)
        if len(line) <= max_chars:
            yield _Unit(no, line, blank, score, section)
        else:
            for i, piece in enumerate(_split_long_line(line, max_chars)):
                yield _Unit(
                    no, piece, False, score if i == 0 else _CUT_INSIDE_LINE, section and i == 0
                )
        if not blank:
            prev_indent = len(line) - len(line.lstrip())
        prev_blank = blank


def _is_heading(stripped: str) -> bool:
    return stripped.startswith(_HEADING_STARTS)


_HEADING_STARTS = (
    "#",
    "@",
    "def ",
    "async def ",
    "class ",
    "func ",
    "fn ",
    "pub ",
    "impl ",
    "struct ",
    "function ",
    "export ",
    "interface ",
    "type ",
    "module ",
    "package ",
)


def _split_long_line(line: str, max_chars: int) -> list[str]:
    """Pieces of ``line``, each at most ``max_chars`` and cut after a space where possible.

    Joined back together the pieces give the line exactly.
    """
    pieces: list[str] = []
    start = 0
    n = len(line)
    while n - start > max_chars:
        end = start + max_chars
        window = line[start + max_chars // 2 : end]
        # prefer the end of a sentence, then any space, then punctuation, then a hard cut
        cut = -1
        for sep in (". ", "; ", " ", ",", ";", ")", "}", ">"):
            at = window.rfind(sep)
            if at >= 0:
                cut = start + max_chars // 2 + at + len(sep)
                break
        if cut <= start:
            cut = end
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return pieces
