"""Length-prefixed pickle frames over pipes, shared by the parent (`tina.grading.pool`) and the worker.

A frame is a 4-byte big-endian length followed by that many bytes of pickle. Both ends are our own code (the worker
is a child process we started), so unpickling is not a trust boundary.

>>> import io
>>> buf = io.BytesIO()
>>> write_frame(buf, ("ready", 1))
>>> _ = buf.seek(0)
>>> read_frame(buf)
('ready', 1)
"""

from __future__ import annotations

import pickle
import struct
from typing import IO, Any

__all__ = ["HEADER", "decode_frames", "read_frame", "write_frame"]

HEADER = struct.Struct(">I")


def write_frame(stream: IO[bytes], obj: Any) -> None:
    """Write one frame and flush."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes]) -> Any | None:
    """Blocking read of one frame; None at end of stream."""
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    payload = _read_exact(stream, size)
    if payload is None:
        return None
    return pickle.loads(payload)


def decode_frames(buffer: bytearray) -> list[Any]:
    """Pop every complete frame from the front of `buffer` (in place) and return the decoded objects.

    >>> b = bytearray(HEADER.pack(len(pickle.dumps(7))) + pickle.dumps(7) + b"\\x00")
    >>> decode_frames(b), len(b)
    ([7], 1)
    """
    out = []
    while len(buffer) >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer)
        if len(buffer) < HEADER.size + size:
            break
        out.append(pickle.loads(bytes(buffer[HEADER.size : HEADER.size + size])))
        del buffer[: HEADER.size + size]
    return out
