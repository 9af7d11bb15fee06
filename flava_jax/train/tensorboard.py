"""TensorBoard event files of scalars, written directly: TFRecord framing around hand-encoded `Event` protos.

Why not tensorboardX: importing it imports torch wherever torch is installed (the evaluator's machines), which
added seconds to every start of the trainer. Scalars need three small messages of tensorflow's event.proto and
summary.proto, encoded here by their field numbers.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, bit-reversed
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields: negatives as two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    """Event{wall_time = 1 (double), step = 2 (int64)} followed by `body`, its `what` field."""
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


def scalars_event(step: int, scalars: Mapping[str, float]) -> bytes:
    """An Event, stamped now, whose `summary` (field 5) holds one Summary.Value{tag = 1, simple_value = 2 (float)}
    a scalar."""
    values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                      for tag, value in scalars.items())
    return _event(time.time(), step, _field(5, values))


class EventsFile:
    """`<directory>/events.out.tfevents.<time>.<host>`, opened with TensorBoard's version event; each write is
    flushed before it returns (no background thread to outlive a failed run)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the run, closed by close()
        self.write(_event(time.time(), 0, _field(3, b"brain.Event:2")))  # file_version = 3

    def write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        self._file.write(header + struct.pack("<I", _masked_crc(header)) + event
                         + struct.pack("<I", _masked_crc(event)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
