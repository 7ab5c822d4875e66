"""Block compression: what is stored compressed and what raw (nexusfs.blocks.Codec).

zstd is worth its time only where it saves much: text, logs, code and databases are stored
compressed; already-compressed data and data that would shrink by only a few percent (fio's
default buffers: random bytes, slightly repetitive) are stored raw, without paying for a
full compression of the block.
"""

from __future__ import annotations

import random

import pytest

from nexusfs.blocks import Codec
from nexusfs.meta import schema

BLOCK = 4 << 20


def partly_compressible(saving: float, seed: int = 1) -> bytes:
    """BLOCK bytes of random data in which about ``saving`` of each KiB is zeros."""
    rng = random.Random(seed)
    zeros = int(1024 * saving)
    return b"".join(rng.randbytes(1024 - zeros) + bytes(zeros) for _ in range(BLOCK // 1024))


def text_block() -> bytes:
    rng = random.Random(2)
    words = ["block", "store", "commit", "fsync", "inode", "search", "mount", "kernel", "write"]
    out = bytearray()
    while len(out) < BLOCK:
        out += (" ".join(rng.choice(words) for _ in range(12)) + "\n").encode()
    return bytes(out[:BLOCK])


def stored(data: bytes) -> tuple[int, float]:
    codec = Codec("zstd")
    payload, kind = codec.encode(data)
    assert bytes(codec.decode(bytes(payload), kind, len(data))) == data
    return kind, len(payload) / len(data)


def test_text_is_stored_compressed():
    kind, ratio = stored(text_block())
    assert kind == schema.CODEC_ZSTD and ratio < 0.5


def test_random_data_is_stored_raw():
    assert stored(random.Random(3).randbytes(BLOCK)) == (schema.CODEC_NONE, 1.0)


@pytest.mark.parametrize("saving", [0.04, 0.08])
def test_data_that_would_shrink_a_little_is_stored_raw(saving):
    """zstd would save a few percent here (checked): not worth compressing the block."""
    data = partly_compressible(saving)
    import zstandard

    assert len(zstandard.ZstdCompressor(level=1).compress(data)) < len(data) * 0.97
    assert stored(data) == (schema.CODEC_NONE, 1.0)


@pytest.mark.parametrize("saving", [0.3, 0.6])
def test_data_that_shrinks_much_is_stored_compressed(saving):
    kind, ratio = stored(partly_compressible(saving))
    assert kind == schema.CODEC_ZSTD and ratio < 1 - saving / 2


def test_small_blocks_are_judged_whole():
    """A block too small for a sample is compressed whenever that saves 3% or more."""
    data = partly_compressible(0.1)[: 64 * 1024]
    kind, ratio = stored(data)
    assert kind == schema.CODEC_ZSTD and ratio < 0.97


def test_no_compression_stores_everything_raw():
    codec = Codec("none")
    assert codec.encode(text_block())[1] == schema.CODEC_NONE
