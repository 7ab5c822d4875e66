"""Line matching with grep's options, on raw bytes (like ``LC_ALL=C grep``).

Patterns use Python ``re`` syntax; the common GNU extended-regex spellings that
differ (``[[:alpha:]]`` classes, ``\\<`` and ``\\>`` word anchors) are accepted too.
A file is binary, and skipped as grep skips it, when it contains a NUL byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from .prefilter import content_filter

_POSIX_CLASSES = {
    "alpha": "A-Za-z",
    "digit": "0-9",
    "alnum": "A-Za-z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "punct": r"!-/:-@\[-`{-~",
    "xdigit": "0-9A-Fa-f",
    "word": r"\w",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
}

BINARY_PROBE = 32768


@dataclass(frozen=True)
class GrepOptions:
    ignore_case: bool = False  # -i
    word: bool = False  # -w
    fixed: bool = False  # -F
    files_only: bool = False  # -l
    count: bool = False  # -c
    line_numbers: bool = True  # -n
    invert: bool = False  # -v


@dataclass(frozen=True, slots=True)
class GrepMatch:
    path: str
    line_no: int
    line: str
    #: a matching line of a binary file (its text is not given), only when asked for
    binary: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line_no}:{self.line}"


def translate_gnu(pattern: str) -> str:
    """Accept GNU spellings Python lacks: [[:class:]] and \\< \\>."""
    for name, body in _POSIX_CLASSES.items():
        pattern = pattern.replace(f"[:{name}:]", body)
    return pattern.replace(r"\<", r"\b(?=\w)").replace(r"\>", r"\b(?<=\w)")


def compile_pattern(pattern: str, opts: GrepOptions) -> re.Pattern[bytes]:
    body = re.escape(pattern) if opts.fixed else translate_gnu(pattern)
    if opts.word:
        body = rf"(?<!\w)(?:{body})(?!\w)"
    flags = re.IGNORECASE if opts.ignore_case else 0
    if "\0" in pattern:
        raise ValueError("a pattern cannot contain a NUL byte (no text line holds one)")
    try:
        return re.compile(body.encode("utf-8", "surrogateescape"), flags | re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {_shown(pattern)}: {exc}") from None
    except OverflowError:
        raise ValueError(f"invalid regular expression {_shown(pattern)}: a repeat count is too large") from None
    except RecursionError:
        raise ValueError(f"invalid regular expression {_shown(pattern)}: nested too deeply") from None


def _shown(pattern: str, width: int = 80) -> str:
    """The pattern for a message (a long one shortened)."""
    return repr(pattern if len(pattern) <= width else pattern[:width] + "...")


def is_binary(data: bytes) -> bool:
    return b"\0" in data


#: a pattern without any regex syntax: its text is what it matches
_PLAIN = re.compile(rb"[^.^$*+?{}\[\]\\|()]+")


Spans = list[tuple[int, int, int]]


def span_matcher(pattern: str, opts: GrepOptions, *,
                 prefilter: bool = False) -> Callable[[bytes], Spans]:
    """A function giving the matching lines of a content as (1-based line number, start
    offset, end offset without the newline) (see ``match_spans``).

    ``prefilter``: first ask RE2 whether the content can match at all (worth it when most
    contents will not: a pattern the index could not narrow)."""
    rx = compile_pattern(pattern, opts)
    raw = pattern.encode("utf-8", "surrogateescape")
    if opts.ignore_case and not opts.invert and (opts.fixed or _PLAIN.fullmatch(raw)):
        # Python folds only ASCII letters for bytes patterns, exactly as bytes.lower() does,
        # so the lowered text searched in the lowered content finds the same lines; a
        # case-sensitive literal search is many times faster than the folding regex engine
        folded = compile_pattern(raw.lower().decode("utf-8", "surrogateescape"),
                                 replace(opts, ignore_case=False, fixed=True))
        return lambda data: match_spans(folded, data.lower(), opts)
    may_match = content_filter(translate_gnu(pattern), opts.ignore_case) \
        if prefilter and not opts.invert and not opts.fixed else None
    if may_match is not None:
        # (-w only narrows a match further: its body alone is a valid pre-check)
        return lambda data: match_spans(rx, data, opts) if may_match(data) else []
    return lambda data: match_spans(rx, data, opts)


def line_matcher(pattern: str, opts: GrepOptions, *,
                 prefilter: bool = False) -> Callable[[bytes], list[tuple[int, bytes]]]:
    """A function giving the matching lines of a content: (1-based line number, line
    without its newline)."""
    spans = span_matcher(pattern, opts, prefilter=prefilter)
    return lambda data: [(n, data[a:b]) for n, a, b in spans(data)]


def match_spans(rx: re.Pattern[bytes], data: bytes, opts: GrepOptions) -> Spans:
    """(1-based line number, start, end) of the lines of ``data`` that ``rx`` matches
    (or, with ``opts.invert``, does not match); a line never includes its newline."""
    out: Spans = []
    n = len(data)
    if opts.invert:
        start, line_no = 0, 1
        while start < n:
            end = data.find(b"\n", start)
            if end < 0:
                end = n
            if not rx.search(data[start:end]):  # the line alone, as grep sees it
                out.append((line_no, start, end))
            start, line_no = end + 1, line_no + 1
        return out
    line_no = 1
    counted = 0  # newlines before this offset are already counted in line_no
    pos = 0
    while pos <= n:
        m = rx.search(data, pos)
        if m is None:
            break
        if m.start() == n and (n == 0 or data[n - 1] == 10):
            break  # an empty match after the final newline is not a line
        j = data.rfind(b"\n", pos, m.start())
        start = j + 1 if j >= 0 else pos
        end = data.find(b"\n", m.start())
        if end < 0:
            end = n
        # a match that runs past the end of its line must also hold for the line alone
        if m.end() <= end or rx.search(data, start, end):
            line_no += data.count(b"\n", counted, start)
            counted = start
            out.append((line_no, start, end))
        pos = end + 1
    return out
