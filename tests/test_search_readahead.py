"""grep's read-ahead: every content's blocks are asked for before grep reads it, and no
more is asked for once the window is full (one content may overshoot it)."""

from __future__ import annotations

from nexusfs.meta.engine import ObjectRef
from nexusfs.search.service import _ReadAhead


class FakeMeta:
    def __init__(self, sizes: dict[int, int]) -> None:
        self.sizes = sizes

    def content_location(self, ino: int):
        size = self.sizes[ino]
        if size == 0:
            return (0, b"", {})  # inline content: nothing to fetch
        return (size, None, {0: ObjectRef(ino, b"h", size, size, 0)})


class FakeBlocks:
    cache_bytes = 4 * 1000  # window: 1000 bytes

    def __init__(self) -> None:
        self.asked: list[int] = []

    def prefetch(self, refs) -> None:
        self.asked.extend(r.id for r in refs)


def test_window_slides_over_all_contents():
    sizes = {i: 300 for i in range(1, 21)}
    sizes[7] = 2500  # larger than the whole window
    sizes[9] = 0
    blocks = FakeBlocks()
    meta = FakeMeta(sizes)
    ahead = _ReadAhead(blocks, [meta.content_location(i) for i in sizes])  # what grep reads, in order
    assert 0 < len(blocks.asked) <= 4  # the first window only
    for ino in sizes:
        ahead.advance()  # grep starts reading this content
        if sizes[ino]:
            assert ino in blocks.asked  # fetched before it is read
        # what is asked for but not read yet: under the window when the last one was added
        outstanding = sum(sizes[i] for i in blocks.asked if i > ino)
        assert outstanding < 1000 + max(sizes.values())
    assert sorted(blocks.asked) == sorted(i for i in sizes if sizes[i])  # each once
