"""Reading a file's committed content, and naming it by a content digest."""

from __future__ import annotations

import blake3

from ..blocks import BlockLayer
from ..meta.engine import MetadataEngine, ObjectRef


def content_digest(size: int, inline: bytes | None, blocks: dict[int, ObjectRef]) -> bytes:
    """A name for the content: equal for files with equal bytes (same block size assumed).

    Computed from the block hashes already stored, so it costs no reading.
    """
    h = blake3.blake3()
    h.update(b"%d\n" % size)
    if inline is not None:
        h.update(b"inline\n")
        h.update(inline)
    else:
        for idx in sorted(blocks):
            h.update(idx.to_bytes(8, "little"))
            h.update(blocks[idx].hash)
    return h.digest()


def read_committed(meta: MetadataEngine, blocks: BlockLayer, ino: int, size: int,
                   inline: bytes | None = None, block_map: dict[int, ObjectRef] | None = None) -> bytes:
    """The committed content of a regular file (holes as zeros)."""
    if inline is None and block_map is None:
        inline = meta.read_inline(ino)
        if inline is None:
            block_map = meta.block_map(ino)
    if inline is not None:
        return inline[:size]
    bs = meta.block_size
    if block_map is not None and len(block_map) == 1 and 0 in block_map and size <= bs:
        # the common case: one block holds the whole file; no assembling
        data = blocks.fetch(block_map[0])
        if len(data) >= size:
            return data if len(data) == size and isinstance(data, bytes) else bytes(memoryview(data)[:size])
    out = bytearray(size)
    view = memoryview(out)
    for idx, ref in (block_map or {}).items():
        start = idx * bs
        if start >= size:
            continue
        data = blocks.fetch(ref)
        n = min(len(data), size - start)
        view[start : start + n] = memoryview(data)[:n]
    return bytes(out)
