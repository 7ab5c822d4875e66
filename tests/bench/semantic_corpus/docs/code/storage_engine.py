"""A tiny key-value storage engine: log-structured writes, an in-memory index, compaction.

Every write is appended to the active segment file; the index maps each key to the segment and
offset of its latest value. Old segments are merged in the background.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

HEADER = struct.Struct("<IIQ")  # crc32, key length, value length
TOMBSTONE = 0xFFFFFFFFFFFFFFFF


class CorruptRecord(Exception):
    pass


def encode_record(key: bytes, value: bytes | None) -> bytes:
    """Frame one record: a checksum over everything after it, the lengths, key, value."""
    vlen = TOMBSTONE if value is None else len(value)
    body = struct.pack("<IQ", len(key), vlen) + key + (value or b"")
    return struct.pack("<I", zlib.crc32(body)) + body


def decode_record(buf: bytes, offset: int):
    """Read the record at ``offset``; raise CorruptRecord when the checksum does not match.

    A torn write at the end of a segment (the machine lost power mid-append) shows up as a
    record whose stored CRC disagrees with its bytes, or as a header that runs past the end.
    """
    if offset + HEADER.size > len(buf):
        raise CorruptRecord("truncated header")
    crc, klen, vlen = HEADER.unpack_from(buf, offset)
    end = offset + HEADER.size + klen + (0 if vlen == TOMBSTONE else vlen)
    if end > len(buf):
        raise CorruptRecord("truncated body")
    if zlib.crc32(buf[offset + 4 : end]) != crc:
        raise CorruptRecord(f"checksum mismatch at {offset}")
    key = buf[offset + HEADER.size : offset + HEADER.size + klen]
    value = None if vlen == TOMBSTONE else buf[offset + HEADER.size + klen : end]
    return key, value, end


class Segment:
    def __init__(self, path: str) -> None:
        self.path = path
        self.file = open(path, "a+b")
        self.size = os.path.getsize(path)

    def append(self, record: bytes) -> int:
        offset = self.size
        self.file.write(record)
        self.size += len(record)
        return offset

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())


class Engine:
    SEGMENT_LIMIT = 64 * 1024 * 1024

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.index: dict[bytes, tuple[str, int]] = {}
        self.lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)
        self.segments = sorted(f for f in os.listdir(directory) if f.endswith(".seg"))
        for name in self.segments:
            self._recover(name)
        self.active = Segment(self._new_segment_path())

    def _recover(self, name: str) -> None:
        """Rebuild the index from a segment after a restart or a crash.

        Records are replayed in order, so a later write of a key replaces an earlier one and a
        tombstone removes it. Reading stops at the first damaged record: everything after a torn
        write is discarded and the file is truncated to the last good record, so the next append
        does not land after garbage.
        """
        path = os.path.join(self.directory, name)
        with open(path, "rb") as f:
            buf = f.read()
        offset = 0
        while offset < len(buf):
            try:
                key, value, end = decode_record(buf, offset)
            except CorruptRecord:
                os.truncate(path, offset)
                break
            if value is None:
                self.index.pop(key, None)
            else:
                self.index[key] = (name, offset)
            offset = end

    def _new_segment_path(self) -> str:
        number = len(self.segments) + 1
        name = f"{number:08d}.seg"
        self.segments.append(name)
        return os.path.join(self.directory, name)

    def put(self, key: bytes, value: bytes, durable: bool = False) -> None:
        with self.lock:
            offset = self.active.append(encode_record(key, value))
            self.index[key] = (os.path.basename(self.active.path), offset)
            if durable:
                self.active.sync()
            if self.active.size >= self.SEGMENT_LIMIT:
                self.active.sync()
                self.active = Segment(self._new_segment_path())

    def delete(self, key: bytes) -> None:
        with self.lock:
            self.active.append(encode_record(key, None))
            self.index.pop(key, None)

    def get(self, key: bytes) -> bytes | None:
        where = self.index.get(key)
        if where is None:
            return None
        name, offset = where
        with open(os.path.join(self.directory, name), "rb") as f:
            f.seek(offset)
            buf = f.read(HEADER.size)
            _, klen, vlen = HEADER.unpack(buf)
            buf += f.read(klen + vlen)
        return decode_record(buf, 0)[1]

    def compact(self) -> None:
        """Merge all closed segments into one that keeps only the live value of each key.

        Old segments are full of overwritten values and deleted keys. Compaction copies the
        records the index still points at into a fresh segment, switches the index over under
        the lock, and only then deletes the old files, so a reader never finds a missing file.
        Disk space used drops to roughly the size of the live data.
        """
        with self.lock:
            closed = [s for s in self.segments if s != os.path.basename(self.active.path)]
            live = {k: v for k, v in self.index.items() if v[0] in closed}
        merged = Segment(os.path.join(self.directory, "merge.tmp"))
        moved = {}
        for key, (name, offset) in live.items():
            value = self.get(key)
            if value is not None:
                moved[key] = merged.append(encode_record(key, value))
        merged.sync()
        final = closed[0] if closed else "00000000.seg"
        with self.lock:
            for name in closed:
                os.remove(os.path.join(self.directory, name))
            os.rename(merged.path, os.path.join(self.directory, final))
            for key, offset in moved.items():
                if self.index.get(key, ("", 0))[0] in closed:
                    self.index[key] = (final, offset)
            self.segments = [final] + [s for s in self.segments if s not in closed]
