"""Node-to-node transport: mutually authenticated TLS links carrying length-prefixed frames."""

from .frames import FrameDecoder, FrameError, encode_frame
from .transport import (
    GREETING,
    PREAMBLE,
    STAT_NAMES,
    Authenticate,
    OnFrame,
    PeerAddress,
    Transport,
    TransportLimits,
    create_ssl_context,
)

__all__ = [
    "GREETING",
    "PREAMBLE",
    "STAT_NAMES",
    "Authenticate",
    "FrameDecoder",
    "FrameError",
    "OnFrame",
    "PeerAddress",
    "Transport",
    "TransportLimits",
    "create_ssl_context",
    "encode_frame",
]
