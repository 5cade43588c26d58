"""gRPC transport with mutual TLS: protocol Messages as chunked client streams.

What crosses the wire: a protobuf ``Chunk`` stream per message (``proto/secrobust.proto``); chunk 0
carries the ``Envelope`` (protocol version, round id, sender id, recipient id, phase, sequence
number, random message id, length, chunk count, SHA-256), every chunk carries at most 1 MiB of the
``Message.to_bytes()`` encoding (raw little-endian arrays). Nothing here knows protocol math: the
listening side hands decoded messages to a party's handler (``secrobust.deploy``).
"""

from ..handler import PartyHandler
from .accounting import Accounting
from .client import PeerClient
from .endpoint import Endpoint
from .errors import PartyUnreachable, Rejected, RemoteRejected

__all__ = ["Accounting", "Endpoint", "PartyHandler", "PartyUnreachable", "PeerClient", "Rejected", "RemoteRejected"]
