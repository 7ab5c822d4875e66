"""The parts semantic search is built from: text extraction, chunking, embedders."""

from __future__ import annotations

import random
import socket
import threading

import numpy as np
import pytest

from nexusfs.errors import ConfigError
from nexusfs.search import embed as embedmod
from nexusfs.search.chunk import chunk_text
from nexusfs.search.embed import Embedder, WordLlamaEmbedder, get_embedder
from nexusfs.search.extract import extract_text, sniff
from tests import needs
from tests.search_helpers import make_docx, make_pdf, need_minilm

# ------------------------------------------------------------------ helpers


def quarterly_report() -> bytes:
    return make_docx(["Revenue grew in every region.", "", [["region", "revenue"], ["north", "120"]],
                      "Costs were flat."], heading="Quarterly report")


def lines_of(text: str) -> list[str]:
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


# ------------------------------------------------------------------ extract


def test_utf8_text_is_returned_with_unix_newlines_and_without_bom():
    got = extract_text("\ufeffline one\r\nline twö\r\n".encode(), "a.txt")
    assert got is not None
    assert (got.text, got.kind, got.truncated) == ("line one\nline twö\n", "text", False)


def test_line_numbers_follow_grep_a_lone_cr_is_no_line_break():
    got = extract_text(b"one\rtwo\r\nthree\n", "old-mac.txt")
    assert got is not None and got.text == "one two\nthree\n"


def test_latin1_text_is_decoded_when_not_utf8():
    data = "Crème brûlée à la française\nœuvre – “quoted”\n".encode("cp1252")
    got = extract_text(data, "recette.txt")
    assert got is not None and got.kind == "text"
    assert got.text == "Crème brûlée à la française\nœuvre – “quoted”\n"
    assert extract_text("naïve café\n".encode("latin-1"), "x").text == "naïve café\n"


def test_binary_data_gives_none():
    assert extract_text(b"ELF\x00\x01\x02 some text", "prog") is None
    rng = random.Random(7)
    noise = bytes(rng.randrange(1, 256) for _ in range(4096))
    assert extract_text(noise, "noise.dat") is None  # no NUL, but not text either
    assert extract_text(b"", "empty.txt") is None
    assert extract_text(b" \n\t\n", "blank.txt") is None


def test_utf16_with_bom_is_text():
    got = extract_text("\ufeffWindows notes\r\nsecond\r\n".encode("utf-16-le"), "n.txt")
    assert got is not None and got.text == "Windows notes\nsecond\n"


def test_text_is_capped_at_a_line_end_and_says_so():
    text = "".join(f"line {i}\n" for i in range(1000))
    got = extract_text(text.encode(), "big.log", max_chars=100)
    assert got is not None and got.truncated
    assert len(got.text) <= 100 and got.text.endswith("\n")
    assert text.startswith(got.text)
    # far over the cap, the bytes are cut before decoding, never inside a UTF-8 sequence
    many = ("é" * 50 + "\n") * 100
    got = extract_text(many.encode(), "accents.txt", max_chars=40)
    assert got is not None and got.truncated and got.text and set(got.text) <= {"é", "\n"}
    assert many.startswith(got.text) and len(got.text) <= 40


def test_a_prefix_of_a_file_is_marked_truncated_without_its_cut_last_line():
    got = extract_text(b"first line\nsecond line\nthird li", "log.txt", partial=True)
    assert got is not None and got.truncated and got.text == "first line\nsecond line\n"


def test_sniff_says_how_much_of_a_file_to_read():
    assert sniff(make_pdf(["x"])[:4096], "a.bin") == "pdf"
    assert sniff(b"PK\x03\x04\x14\x00", "letter.docx") == "docx"
    assert sniff(b"PK\x03\x04\x14\x00", "photos.zip") == "binary"
    assert sniff(b"\x7fELF\x02\x01\x01\x00", "prog") == "binary"
    assert sniff("\ufeffhi".encode("utf-16-le"), "w.txt") == "text"
    assert sniff(b"plain words\n", "notes") == "text"


def test_pdf_pages_are_text_separated_by_a_form_feed_line():
    pdf = make_pdf(["Tardigrades survive in space.", "Second line (here)."], ["Page two."])
    got = extract_text(pdf, "paper.pdf")
    assert got is not None and got.kind == "pdf" and not got.truncated
    assert got.text.split("\n") == [
        "Tardigrades survive in space.",
        "Second line (here).",
        "\f",
        "Page two.",
    ]
    # detected by its magic bytes, whatever the name
    assert extract_text(pdf, "download.bin") == got


def test_broken_pdf_and_docx_give_none_without_raising():
    pdf = make_pdf(["hello"])
    assert extract_text(pdf[: len(pdf) // 2] + b"\x00garbage", "cut.pdf") is None
    assert extract_text(b"%PDF-1.7\n\x00\x01\x02 not really", "x.pdf") is None
    assert extract_text(b"PK\x03\x04 not a zip at all \x00", "letter.docx") is None


def test_text_file_that_starts_like_a_pdf_stays_text():
    got = extract_text(b"%PDF- is how a PDF file starts\n", "notes.md")
    assert got is not None and got.kind == "text"


def test_docx_paragraphs_and_table_rows_become_lines():
    got = extract_text(quarterly_report(), "report.docx")
    assert got is not None and got.kind == "docx"
    assert got.text.split("\n") == [
        "Quarterly report",
        "Revenue grew in every region.",
        "",
        "region\trevenue",
        "north\t120",
        "Costs were flat.",
    ]
    # found by content even under another name
    assert extract_text(quarterly_report(), "attachment").kind == "docx"


# ------------------------------------------------------------------ chunk


def test_chunks_name_exact_line_ranges_and_cut_at_blank_lines():
    paragraphs = [
        "\n".join(f"paragraph {p} sentence {s} " + "words " * 8 for s in range(5))
        for p in range(12)
    ]
    text = "\n\n".join(paragraphs) + "\n"
    lines = lines_of(text)
    chunks = chunk_text(text, max_chars=1000, target_chars=600)
    assert len(chunks) > 1
    for c in chunks:
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line])
        assert len(c.text) <= 1000
        assert lines[c.start_line - 1].strip() and lines[c.end_line - 1].strip()
        # every cut falls at a paragraph boundary
        assert c.start_line == 1 or lines[c.start_line - 2] == ""
    assert [c.seq for c in chunks] == list(range(len(chunks)))


def test_no_line_is_lost_or_repeated():
    rng = random.Random(3)
    for _ in range(200):
        lines = []
        for _ in range(rng.randint(0, 120)):
            kind = rng.random()
            if kind < 0.2:
                lines.append("")
            elif kind < 0.24:
                lines.append(" ".join("word" for _ in range(rng.randint(200, 700))))
            else:
                lines.append(" " * rng.choice([0, 4]) + "x" * rng.randint(1, 90))
        text = "\n".join(lines)
        chunks = chunk_text(text, max_chars=rng.choice([200, 600, 1000]), target_chars=300)
        covered = [n for c in chunks for n in range(c.start_line, c.end_line + 1)]
        wanted = [n for n, line in enumerate(lines, 1) if line.strip()]
        assert set(wanted) <= set(covered)
        # the chunks hold exactly the text's non-blank characters, once
        assert "".join("".join(c.text.split()) for c in chunks) == "".join(text.split())


def test_a_very_long_line_is_split_into_pieces_of_that_line():
    line = " ".join(f"w{i}" for i in range(3000))
    text = "intro\n\n" + line + "\n\noutro\n"
    chunks = chunk_text(text, max_chars=500, target_chars=300)
    pieces = [c for c in chunks if c.start_line == c.end_line == 3]
    assert len(pieces) >= len(line) // 500
    assert "".join(c.text for c in pieces) == line
    assert all(len(c.text) <= 500 for c in chunks)
    assert all(p.text.endswith(" ") for p in pieces[:-1])  # cut after a space
    assert chunks[0].text == "intro" and chunks[-1].text == "outro"


def test_long_code_without_blank_lines_is_cut_before_a_definition():
    body = "".join(f"    x{i} = compute({i})\n" for i in range(20))
    text = "def first():\n" + body + "def second():\n" + body
    chunks = chunk_text(text, max_chars=700, target_chars=400)
    assert chunks[0].start_line == 1 and chunks[0].end_line == 21
    assert chunks[1].start_line == 22 and chunks[1].text.startswith("def second")


def test_a_new_section_starts_a_new_chunk():
    sections = [
        f"## Section {i}\n\n"
        + "\n".join(f"Sentence {j} of section {i}, " + "text " * 9 for j in range(6))
        for i in range(5)
    ]
    text = "# Title\n\n" + "\n\n".join(sections) + "\n"
    lines = lines_of(text)
    chunks = chunk_text(text, max_chars=1000, target_chars=600)
    starts = [lines[c.start_line - 1] for c in chunks]
    assert starts[1:] == [f"## Section {i}" for i in range(1, 5)]
    merged = chunk_text(text, max_chars=1000, target_chars=600, section_breaks=False)
    assert len(merged) < len(chunks)


def test_lines_are_counted_like_grep():
    text = "a\rstill line one\x0cand \x1c here\nline two"
    chunks = chunk_text(text)
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 2)]
    assert chunk_text("") == [] and chunk_text("\n\n  \n") == []
    assert chunk_text("one\n")[0].end_line == 1


def test_overlap_repeats_lines_only_inside_a_paragraph():
    text = "\n".join(f"line {i:03d} " + "y" * 40 for i in range(60))
    plain = chunk_text(text, max_chars=500, target_chars=300)
    over = chunk_text(text, max_chars=500, target_chars=300, overlap_lines=2)
    assert plain[1].start_line == plain[0].end_line + 1
    assert over[1].start_line == over[0].end_line - 1
    blocks = "\n\n".join("\n".join(["z" * 50] * 4) for _ in range(10))
    chunked = chunk_text(blocks, max_chars=500, target_chars=300, overlap_lines=2)
    ends = [(c.start_line, c.end_line) for c in chunked]
    assert all(b[0] > a[1] for a, b in zip(ends, ends[1:], strict=False))


# ------------------------------------------------------------------ embed


@pytest.fixture(scope="session")
def wordllama() -> Embedder:
    needs.need_module("semantic", "wordllama")
    return get_embedder("wordllama")


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    need_minilm()
    return get_embedder("minilm")


SENTENCES = [
    "How do I reset my password for the company email account?",
    "Steps to change the login credentials of your work mailbox.",
    "Simmer the tomatoes with garlic and basil for twenty minutes.",
]


@pytest.mark.parametrize("name", ["wordllama", "minilm"])
def test_embeddings_are_unit_float32_rows_and_similar_texts_are_closer(name, request):
    emb = request.getfixturevalue(name)
    assert isinstance(emb, Embedder) and emb.name == name and emb.model_id
    vecs = emb.embed(SENTENCES)
    assert vecs.shape == (3, emb.dim) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.1
    assert sims[0, 1] > sims[1, 2] + 0.1
    assert emb.embed([]).shape == (0, emb.dim)
    # batching and ordering do not change a text's vector
    again = emb.embed([SENTENCES[2], "filler"] * 40 + [SENTENCES[0]])
    assert np.allclose(again[0], vecs[2], atol=1e-4) and np.allclose(again[-1], vecs[0], atol=1e-4)


def test_wordllama_gives_a_zero_row_for_a_text_without_tokens(wordllama):
    vecs = wordllama.embed(["", "some words"])
    assert not np.isnan(vecs).any()
    assert np.allclose(vecs[0], 0.0) and np.isclose(np.linalg.norm(vecs[1]), 1.0)


def test_minilm_matches_the_reference_model(minilm):
    # cosine similarities published for sentence-transformers/all-MiniLM-L6-v2 (fp32);
    # the int8 model stays within a few hundredths
    vecs = minilm.embed(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    sims = vecs @ vecs.T
    assert sims[0, 1] == pytest.approx(0.666, abs=0.03)
    assert sims[0, 2] == pytest.approx(0.105, abs=0.03)
    assert sims[1, 2] == pytest.approx(0.141, abs=0.03)


def test_minilm_reads_only_the_first_256_tokens(minilm):
    long = " ".join(f"word{i}" for i in range(400))
    a, b = minilm.embed([long, long + " and a different ending about cooking pasta"])
    assert np.allclose(a, b, atol=1e-5)


def test_wordllama_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading the model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = WordLlamaEmbedder()  # a fresh load, not the cached instance
    assert emb.embed(["offline"]).shape == (1, 256)


def test_default_embedder_is_a_real_model_loaded_once(wordllama):
    assert embedmod.DEFAULT_EMBEDDER == "wordllama"
    assert get_embedder(None) is wordllama
    assert get_embedder("WordLlama") is wordllama


def test_unknown_embedder_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        get_embedder("no-such-model")
    message = str(err.value)
    assert "\n" not in message and "no-such-model" in message and "wordllama" in message


def test_missing_package_is_a_config_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(
        embedmod._REGISTRY,
        "needs-missing",
        embedmod._Entry(lambda: None, {"nexusfs_no_such_module": "no-such-dist"}, "semantic-x"),
    )
    with pytest.raises(ConfigError) as err:
        get_embedder("needs-missing")
    message = str(err.value)
    assert "\n" not in message and "no-such-dist" in message and "nexusfs[semantic-x]" in message


def test_concurrent_first_use_loads_the_model_once(monkeypatch):
    calls = []
    gate = threading.Event()

    class Slow:
        name = "slow"
        model_id = "slow-1"
        dim = 2

        def __init__(self):
            calls.append(1)
            gate.wait(1)

        def embed(self, texts):
            return np.zeros((len(texts), 2), np.float32)

    monkeypatch.setitem(embedmod._REGISTRY, "slow", embedmod._Entry(Slow, {}, ""))
    monkeypatch.setattr(embedmod, "_LOADED", dict(embedmod._LOADED))
    got = []
    threads = [threading.Thread(target=lambda: got.append(get_embedder("slow"))) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)


def test_a_model_that_fails_to_load_is_a_config_error(monkeypatch):
    def broken():
        raise FileNotFoundError("weights file missing")

    monkeypatch.setitem(embedmod._REGISTRY, "broken", embedmod._Entry(broken, {}, ""))
    with pytest.raises(ConfigError, match="weights file missing"):
        get_embedder("broken")
