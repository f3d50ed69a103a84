"""Length-prefixed frames: the pure, sans-IO half of the p2p transport.

A frame on the wire is a 4-byte big-endian unsigned payload length followed by that
many payload bytes. A length of 0 is never valid, and a length above the receiver's
``max_frame_bytes`` is refused as soon as its header arrives, before any of the body
is buffered. :class:`FrameDecoder` turns received chunks into payloads; it knows
nothing about sockets or clocks.
"""

from __future__ import annotations

from ..errors import InvalidInput

__all__ = [
    "HEADER_BYTES",
    "MAX_FRAME_LIMIT_BYTES",
    "FrameDecoder",
    "FrameError",
    "encode_frame",
    "encode_header",
]

HEADER_BYTES = 4
MAX_FRAME_LIMIT_BYTES = 2**32 - 1  # the most a 4-byte length can say


class FrameError(InvalidInput):
    """A peer sent a frame header that no receiver may accept.

    ``code`` is ``empty_frame`` (length 0) or ``oversized_frame`` (above the limit).
    """


def encode_header(length: int) -> bytes:
    """The 4-byte header announcing a payload of ``length`` bytes."""
    if not 0 < length <= MAX_FRAME_LIMIT_BYTES:
        raise FrameError(f"frame length {length} is outside 1..{MAX_FRAME_LIMIT_BYTES}")
    return length.to_bytes(HEADER_BYTES, "big")


def encode_frame(payload: bytes) -> bytes:
    """Header and payload as one buffer."""
    return encode_header(len(payload)) + payload


class FrameDecoder:
    """Accumulates received bytes and yields complete payloads in order.

    Feed chunks with :meth:`feed`, then call :meth:`next_frame` until it returns
    ``None``. A bad header raises :class:`FrameError`; the decoder is useless after
    that and the connection should be closed. Memory is bounded by one frame of at
    most ``max_frame_bytes`` plus one received chunk.
    """

    __slots__ = ("_buf", "_max_frame_bytes", "_pos")

    def __init__(self, max_frame_bytes: int) -> None:
        if not 0 < max_frame_bytes <= MAX_FRAME_LIMIT_BYTES:
            raise InvalidInput(
                f"max_frame_bytes must be in 1..{MAX_FRAME_LIMIT_BYTES}", code="bad_config"
            )
        self._max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buf

    @property
    def pending(self) -> bool:
        """True while a frame has started (at least one byte of it) but not completed."""
        return len(self._buf) > self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete payload, ``None`` if it has not fully arrived yet."""
        start = self._pos
        available = len(self._buf) - start
        if available < HEADER_BYTES:
            return None
        length = int.from_bytes(self._buf[start : start + HEADER_BYTES], "big")
        self._validate_length(length)
        end = start + HEADER_BYTES + length
        if end > len(self._buf):
            return None
        with memoryview(self._buf) as view:
            payload = bytes(view[start + HEADER_BYTES : end])
        self._pos = end
        return payload

    def _validate_length(self, length: int) -> None:
        if length == 0:
            raise FrameError("a frame of length 0 is not allowed", code="empty_frame")
        if length > self._max_frame_bytes:
            raise FrameError(
                f"frame of {length} bytes exceeds the limit of {self._max_frame_bytes}",
                code="oversized_frame",
            )
