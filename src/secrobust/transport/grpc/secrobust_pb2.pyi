from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("version", "round_id", "sender", "recipient", "phase", "seq", "message_id", "total_bytes", "chunk_count", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    round_id: int
    sender: str
    recipient: str
    phase: str
    seq: int
    message_id: bytes
    total_bytes: int
    chunk_count: int
    sha256: bytes
    def __init__(self, version: _Optional[int] = ..., round_id: _Optional[int] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., phase: _Optional[str] = ..., seq: _Optional[int] = ..., message_id: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., chunk_count: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("envelope", "index", "data")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    index: int
    data: bytes
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("message_id", "bytes_received")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    message_id: bytes
    bytes_received: int
    def __init__(self, message_id: _Optional[bytes] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("version", "round_id", "requester", "phase", "timeout_s")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    version: int
    round_id: int
    requester: str
    phase: str
    timeout_s: float
    def __init__(self, version: _Optional[int] = ..., round_id: _Optional[int] = ..., requester: _Optional[str] = ..., phase: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ControlRequest(_message.Message):
    __slots__ = ("version", "round_id", "sender", "command", "json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    round_id: int
    sender: str
    command: str
    json: bytes
    def __init__(self, version: _Optional[int] = ..., round_id: _Optional[int] = ..., sender: _Optional[str] = ..., command: _Optional[str] = ..., json: _Optional[bytes] = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    def __init__(self, json: _Optional[bytes] = ...) -> None: ...
