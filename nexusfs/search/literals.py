"""What a regular expression requires of a file's text, as a trigram query.

A file can match ``foo(bar|baz)\\d+`` only if its text contains the trigrams
of "foobar" or of "foobaz". This module walks Python's parse tree of a pattern
and computes such a query (AND / OR of trigrams), in the spirit of Russ Cox's
code search. The query is a necessary condition only: every candidate it
selects is verified against the real content, so it may over-select but must
never exclude a file that matches. Anything it cannot reason about becomes
"any file" (``ALL``). Trigrams are case-folded, like the index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

try:  # Python 3.11+
    from re import _constants as C  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older Pythons
    import sre_constants as C  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

#: exact-string sets larger than this are turned into queries
MAX_EXACT = 24
#: character classes up to this size are expanded into exact sets
MAX_CLASS = 8


@dataclass(frozen=True)
class Query:
    """op is 'all' (no constraint), 'none' (nothing can match), 'tri', 'and' or 'or'."""

    op: str
    trigram: str = ""
    args: tuple[Query, ...] = ()

    def __str__(self) -> str:
        if self.op == "tri":
            return repr(self.trigram)
        if self.op in ("all", "none"):
            return self.op.upper()
        return "(" + f" {self.op.upper()} ".join(str(a) for a in self.args) + ")"

    def trigrams(self) -> set[str]:
        if self.op == "tri":
            return {self.trigram}
        out: set[str] = set()
        for a in self.args:
            out |= a.trigrams()
        return out


ALL = Query("all")
NONE = Query("none")


def q_and(*qs: Query) -> Query:
    flat: list[Query] = []
    for q in qs:
        if q.op == "none":
            return NONE
        if q.op == "all":
            continue
        flat.extend(q.args if q.op == "and" else (q,))
    uniq = tuple(dict.fromkeys(flat))
    if not uniq:
        return ALL
    return uniq[0] if len(uniq) == 1 else Query("and", args=uniq)


def q_or(*qs: Query) -> Query:
    flat: list[Query] = []
    for q in qs:
        if q.op == "all":
            return ALL
        if q.op == "none":
            continue
        flat.extend(q.args if q.op == "or" else (q,))
    uniq = tuple(dict.fromkeys(flat))
    if not uniq:
        return NONE
    return uniq[0] if len(uniq) == 1 else Query("or", args=uniq)


def _fold(s: str) -> str:
    """Lower-case ASCII letters only: always one character for one, like the index's folding.

    (``str.lower`` may change a string's length -- 'İ' becomes two characters -- and so
    produce trigrams the index never holds; SQLite folds the rest of the query itself.)
    """
    return s.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _indexable(gram: str) -> bool:
    # bytes that are not UTF-8 (surrogate escapes) cannot be looked up: the text index holds
    # UTF-8 content only (other content is always scanned)
    return not any("\udc80" <= c <= "\udcff" for c in gram)


def string_query(s: str) -> Query:
    """All trigrams of ``s`` (ALL when it is shorter than three characters)."""
    s = _fold(s)
    grams = [s[i : i + 3] for i in range(len(s) - 2)]
    return q_and(*(Query("tri", g) for g in grams if _indexable(g)))


@dataclass
class _Info:
    #: every string the node can match, when that set is small; else None
    exact: set[str] | None
    #: a condition the text must satisfy besides (used when exact is None)
    query: Query = ALL

    def as_query(self) -> Query:
        if self.exact is not None:
            return q_or(*(string_query(_text(s)) for s in self.exact)) if self.exact else NONE
        return self.query


def _text(s: str) -> str:
    """The text a run of the pattern's bytes (one character per byte, see
    ``required_query``) stands for in the indexed text; bytes that are not whole UTF-8
    characters become surrogate escapes, which no trigram lookup uses."""
    return s.encode("latin-1").decode("utf-8", "surrogateescape")


def _chars_of_class(items: list, ignore_case: bool) -> set[str] | None:
    chars: set[str] = set()
    for op, av in items:
        if op is C.LITERAL:
            chars.add(chr(av))
        elif op is C.RANGE:
            lo, hi = av
            if hi - lo + 1 > MAX_CLASS:
                return None
            chars.update(chr(c) for c in range(lo, hi + 1))
        else:  # NEGATE, CATEGORY, ...
            return None
        if len(chars) > MAX_CLASS:
            return None
    if ignore_case:
        chars = {_fold(c) for c in chars}
    return chars


def _concat(infos: list[_Info]) -> _Info:
    exact: set[str] | None = {""}
    parts: list[Query] = []
    for info in infos:
        if exact is not None and info.exact is not None and len(exact) * len(info.exact) <= MAX_EXACT:
            exact = {a + b for a in exact for b in info.exact}
            continue
        if exact is not None:
            parts.append(_Info(exact).as_query())
        if info.exact is not None:
            exact = set(info.exact)
        else:
            parts.append(info.query)
            exact = None
    if exact is not None and not parts:
        return _Info(exact)
    if exact is not None:
        parts.append(_Info(exact).as_query())
    return _Info(None, q_and(*parts))


def _analyze(seq, ignore_case: bool) -> _Info:
    return _concat([_node(op, av, ignore_case) for op, av in seq])


def _node(op, av, ignore_case: bool) -> _Info:
    if op is C.LITERAL:
        c = chr(av)
        return _Info({_fold(c) if ignore_case else c})
    if op is C.IN:
        chars = _chars_of_class(av, ignore_case)
        return _Info(chars) if chars is not None else _Info(None, ALL)
    if op is C.SUBPATTERN:
        group, add_flags, del_flags, sub = av
        ic = (ignore_case or bool(add_flags & re.IGNORECASE)) and not del_flags & re.IGNORECASE
        return _analyze(sub, ic)
    if op is C.BRANCH:
        _unused, branches = av
        infos = [_analyze(b, ignore_case) for b in branches]
        if all(i.exact is not None for i in infos):
            union: set[str] = set().union(*(i.exact for i in infos))  # type: ignore[arg-type]
            if len(union) <= MAX_EXACT:
                return _Info(union)
        return _Info(None, q_or(*(i.as_query() for i in infos)))
    if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
        lo, hi, sub = av
        info = _analyze(sub, ignore_case)
        if lo == 0:
            if hi == 1 and info.exact is not None and len(info.exact) < MAX_EXACT:
                return _Info(info.exact | {""})
            # any number of repetitions (or none): no constraint, and no exact set either --
            # {""} would glue its neighbours together ('a.*b' does not require the text 'ab')
            return _Info(None, ALL)
        if lo == hi == 1:
            return info
        # at least one occurrence: what the element requires still holds
        return _Info(None, info.as_query())
    if op is getattr(C, "ATOMIC_GROUP", None):
        return _analyze(av, ignore_case)
    if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
        return _Info({""})
    # ANY, NOT_LITERAL, CATEGORY, GROUPREF, GROUPREF_EXISTS, ...: could be anything
    return _Info(None, ALL)


def required_query(pattern: str, *, ignore_case: bool = False, fixed: bool = False) -> Query:
    """The trigram condition a text must meet to possibly contain a match of ``pattern``."""
    if fixed:
        return string_query(pattern)
    # grep runs the pattern as a bytes regex: parse it as one too, so that an escape such as
    # \xc3 is the byte it matches there (a str parse would read the character U+00C3) and a
    # class [é] is the class of that character's bytes. Each byte becomes one character
    # here; _text turns runs of them into text.
    try:
        parsed = sre_parse.parse(pattern.encode("utf-8", "surrogateescape"), re.IGNORECASE if ignore_case else 0)
    except (re.error, OverflowError):
        return ALL
    ic = ignore_case or bool(parsed.state.flags & re.IGNORECASE)
    return _analyze(list(parsed), ic).as_query()


def fts5_expression(q: Query) -> str | None:
    """An FTS5 MATCH expression for ``q`` (None for ALL; '' for NONE)."""
    if q.op == "all":
        return None
    if q.op == "none":
        return ""
    if q.op == "tri":
        return '"' + q.trigram.replace('"', '""') + '"'
    parts = [fts5_expression(a) for a in q.args]
    joiner = " AND " if q.op == "and" else " OR "
    return "(" + joiner.join(p for p in parts if p) + ")"
