"""TensorBoard event files, written without TensorFlow: `tensorboard = true` in a train declaration.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, data, masked CRC-32C
of the data), each an `Event` protocol buffer: the first says the file version, the others hold
scalars (`Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2}}}`). The few fields
are encoded by hand below. Each run (and each resumed run) writes a file of its own, named as
TensorBoard looks for them (`events.out.tfevents.TIME.HOST`); records are flushed with the
checkpoints, so a killed run loses at most the scalars since the last one.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for byte in data:
        c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    c = crc32c(data)
    return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall: float, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall) + b"\x10" + _varint(step) + body


def record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + _masked(length) + data + _masked(data)


class EventWriter:
    def __init__(self, folder: Path):
        self.path = Path(folder) / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._pending = [record(_event(0, time.time(), _field(3, b"brain.Event:2")))]

    def scalars(self, step: int, values: dict) -> None:
        """One event per step: every finite number in `values`, tagged by its key."""
        summary = b"".join(_field(1, _field(1, str(k).encode()) + b"\x15" + struct.pack("<f", float(v)))
                           for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                           and v == v and abs(v) != float("inf"))
        if summary:
            self._pending.append(record(_event(step, time.time(), _field(5, summary))))

    def flush(self) -> None:
        if self._pending:
            with open(self.path, "ab") as f:
                f.write(b"".join(self._pending))
            self._pending = []
