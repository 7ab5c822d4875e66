"""The RE2 pre-check may only rule out contents Python's re finds no match in.

For each pattern and content: when Python's ``re`` (bytes, MULTILINE, as grep compiles it)
matches, the pre-check must say "may match"; where the two engines agree, it must also
say "no" for contents without a match (else it would be useless).
"""

from __future__ import annotations

import pytest

from nexusfs.search.grep import GrepOptions, compile_pattern, line_matcher, translate_gnu
from nexusfs.search.prefilter import content_filter
from tests import needs


@pytest.fixture(autouse=True)
def _re2():
    """google-re2 is a declared dependency: without it each test fails (skips only if opted out)."""
    needs.need_module("deps", "re2")


CONTENTS = [
    b"",
    b"plain text\n",
    b"2026-11-28 a date\nno date here\n",
    b"tab\there\nvertical\x0btab\nform\x0cfeed\ncr\rlf\n",
    b"caf\xc3\xa9 CAF\xc3\x89 latin1 caf\xe9 CAF\xc9\n",
    b"abcabc xyzxyz\nabab\n",
    b"word_123 other-word\n_under score\n",
    b"start of line\n  indented\nend of file without newline",
    b"\xff\xfe raw bytes \x80\x81\n",
    b"aaaa" * 600 + b"\n",
    b"class FooError(Exception):\n    pass\n",
    b"x=1;y=22;z=333\n",
    b"end at the very start\ncr\rlf\nend of the file",
]

PATTERNS = [
    (r"[0-9]{4}-[0-9]{2}-[0-9]{2}", False),
    (r"\d+", False),
    (r"\s\S", False),
    (r"vertical\stab", False),  # \v: Python's \s has it, RE2's does not
    (r"[\s]tab", False),
    (r"[^\S]tab", False),
    (r"\w+_\w+", False),
    (r"[\W\d]x", False),
    (r"[^\w\s]", False),
    (r"^\s+\w", False),
    (r"without newline$", False),
    (r"\Aend", False),
    (r"file\Z", False),
    (r"\bword\b", False),
    (r"\Bnder", False),
    (r"(abc)\1", False),  # back-reference
    (r"(ab)(?(1)ab|cd)", False),  # conditional
    (r"(?<=x)yz", False),  # lookbehind
    (r"xyz(?!xyz)", False),  # negative lookahead
    (r"a{1200}", False),  # above RE2's repeat limit
    (r"a{2,1500}b?", False),
    (r"a++", False),  # possessive
    (r"(?>ab)ab", False),  # atomic group
    (r"caf.", False),
    (r"(?s)lf.end", False),
    (r"(?i)CAF\xe9", False),
    (r"caf\xc3\xa9", True),
    (r"(?i:CLASS) \w+Error", False),
    (r"[a-c]{3}|[x-z]{3}", False),
    (r"\x80\x81", False),
    (r"[[:digit:]]{3}", False),
    (r"z=\d{3}$", False),
    (r"(?m)^x=", False),
]


@pytest.mark.parametrize("pattern,ignore_case", PATTERNS)
def test_never_rules_out_a_matching_content(pattern, ignore_case):
    opts = GrepOptions(ignore_case=ignore_case)
    rx = compile_pattern(pattern, opts)
    check = content_filter(translate_gnu(pattern), ignore_case)  # as line_matcher does
    assert check is not None, f"{pattern!r} should be translatable"
    matching = [data for data in CONTENTS if rx.search(data)]
    assert matching, f"{pattern!r} matches none of CONTENTS: add a content it matches, or the check below never runs"
    for data in matching:
        assert check(data), f"{pattern!r} matches {data[:60]!r} but the pre-check ruled it out"


def test_rules_out_contents_without_a_match():
    check = content_filter(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", False)
    assert check is not None
    assert check(b"on 2026-11-28 we\n")
    assert not check(b"no dates at all\n1234-5-6\n")
    assert not content_filter(r"\s\S", False)(b"")


def test_no_pre_check_for_what_cannot_be_written_for_re2():
    assert content_filter(r"[\S\d]", False) is None  # \S mixed into a class
    assert content_filter("\\u0100", False) is None  # not a byte
    assert content_filter("(unbalanced", False) is None


def test_grep_results_unchanged_by_the_pre_check(tmp_path):
    """End to end: the store's grep (which pre-checks patterns the index cannot narrow)
    finds the same lines as the plain matcher on every content."""
    import nexusfs

    files = {f"/f{i}.txt": data for i, data in enumerate(CONTENTS)}
    with nexusfs.connect(str(tmp_path / "store"), background_indexing=False, semantic=False) as nx:
        nx.write_many(files)
        nx.reindex()
        for pattern, ignore_case in PATTERNS:
            plain = line_matcher(pattern, GrepOptions(ignore_case=ignore_case))
            want = sorted((path, n) for path, data in files.items() for n, _line in plain(data))
            got = sorted((m.path, m.line_no) for m in nx.grep(pattern, ignore_case=ignore_case))
            assert got == want, pattern


def test_trigram_query_reads_escapes_as_bytes():
    """grep runs patterns as bytes regexes: \\xc3\\xa9 is the two bytes of 'é' there, and the
    trigram query must ask for 'é' (reading U+00C3 U+00A9 excluded the file: no results)."""
    from nexusfs.search.literals import fts5_expression, required_query

    assert fts5_expression(required_query(r"caf\xc3\xa9")) == fts5_expression(required_query("café"))
    # [é] is a class of one byte (either of the two of 'é'): nothing beyond "caf" is required
    assert fts5_expression(required_query("caf[é]x")) == '"caf"'
