"""The wire format of protocol messages: round trips, and negative vectors that must be refused."""

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secrobust.errors import MalformedMessage
from secrobust.protocol import messages as M
from secrobust.protocol.messages import Message

DTYPES = ["<u8", "<f8", "<i8", "|u1"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**200), 2**200), st.text(max_size=12),
                    st.binary(max_size=12), st.floats(allow_nan=False, allow_infinity=False))
field_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def arrays(draw):
    dt = np.dtype(draw(st.sampled_from(DTYPES)))
    return draw(hnp.arrays(dt, shapes))


@st.composite
def messages(draw):
    return Message(
        kind=draw(st.sampled_from(M.KINDS)),
        round_id=draw(st.integers(0, 2**63)),
        sender=draw(st.text(max_size=10)),
        recipient=draw(st.text(max_size=10)),
        fields=draw(st.dictionaries(st.text(max_size=6), field_values, max_size=4)),
        arrays=draw(st.dictionaries(st.text(max_size=6), arrays(), max_size=3)),
    )


def same(a: Message, b: Message) -> bool:
    """Message equality that compares arrays by dtype, shape and content (NaN equal to NaN)."""
    head = (a.kind, a.round_id, a.sender, a.recipient, a.version, dict(a.fields))
    if head != (b.kind, b.round_id, b.sender, b.recipient, b.version, dict(b.fields)):
        return False
    if list(a.arrays) != list(b.arrays):
        return False
    for k in a.arrays:
        x, y = np.asarray(a.arrays[k]), np.asarray(b.arrays[k])
        if x.dtype.newbyteorder("<") != y.dtype.newbyteorder("<") or x.shape != y.shape:
            return False
        if not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            return False
    return True


def raw(header, payload: bytes = b"") -> bytes:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    return M.MAGIC + struct.pack("<I", len(hb)) + hb + payload


GOOD_HEADER = {"v": 1, "kind": M.WEIGHTS, "round": 3, "sender": "S1", "recipient": "S0",
               "fields": {"center_weight": 0.5}, "arrays": [["weights", "<f8", [2]]]}
GOOD_PAYLOAD = np.array([0.25, 0.75]).tobytes()
REPRESENTATIVE = Message(M.SHARE_KEY, 7, "S0", "worker:3",
                         fields={"worker": 3, "seed": bytes(range(16)), "d": 5, "tags": ["a", 1, b"\x01", None, True],
                                 "x": -2.5e-3},
                         arrays={"x1": np.arange(5, dtype=np.uint64), "w": np.array([[1.5, -2.0]]),
                                 "i": np.array([-1], dtype=np.int64), "b": np.zeros(0, dtype=np.uint8)})


# --- round trips --------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(msg=messages())
def test_to_bytes_then_from_bytes_is_the_identity(msg):
    data = msg.to_bytes()
    back = Message.from_bytes(data)
    assert same(back, msg)
    assert all(back.arrays[k].dtype.str in DTYPES for k in back.arrays)
    assert back.to_bytes() == data


def test_the_wire_layout_is_magic_length_header_payload():
    data = REPRESENTATIVE.to_bytes()
    (hlen,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + hlen])
    assert data[:4] == b"SRB1"
    assert header["fields"]["seed"] == {"hex": bytes(range(16)).hex()}
    assert header["arrays"][0] == ["x1", "<u8", [5]]
    assert data[8 + hlen : 8 + hlen + 40] == np.arange(5, dtype="<u8").tobytes()
    assert len(data) == 8 + hlen + 40 + 16 + 8 + 0


@pytest.mark.parametrize("dt,want", [(">u8", "<u8"), (">f8", "<f8"), (">i8", "<i8"), ("=u8", "<u8"), ("u1", "|u1")])
def test_arrays_of_any_byte_order_round_trip_as_little_endian(dt, want):
    a = np.array([[1, 2], [3, 250]], dtype=dt)
    back = Message.from_bytes(Message(M.WEIGHTS, 0, "a", "b", arrays={"a": a}).to_bytes()).arrays["a"]
    assert back.dtype.str == want
    np.testing.assert_array_equal(back, a)


def test_zero_dimensional_arrays_keep_their_shape():
    back = Message.from_bytes(Message(M.WEIGHTS, 0, "a", "b", arrays={"s": np.array(7, dtype=np.uint64)}).to_bytes())
    assert back.arrays["s"].shape == ()


def test_the_decoder_reads_a_zero_dimensional_spec():
    msg = Message.from_bytes(raw(_with(arrays=[["s", "<u8", []]]), np.array([9], dtype="<u8").tobytes()))
    assert msg.arrays["s"].shape == () and int(msg.arrays["s"]) == 9


def test_non_contiguous_arrays_round_trip():
    a = np.arange(12, dtype=np.uint64).reshape(3, 4)[:, ::2].T
    back = Message.from_bytes(Message(M.WEIGHTS, 0, "a", "b", arrays={"a": a}).to_bytes()).arrays["a"]
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("dt", [np.bool_, np.float32, np.int32, np.uint32, np.complex128, object])
def test_arrays_of_other_dtypes_are_refused_when_encoding(dt):
    with pytest.raises(TypeError, match="has dtype"):
        Message(M.WEIGHTS, 0, "a", "b", arrays={"a": np.zeros(2, dtype=dt)}).to_bytes()


@pytest.mark.parametrize("value", [{"k": 1}, {"hex": "ab"}])
def test_a_field_value_that_cannot_round_trip_is_refused_by_to_bytes(value):
    msg = Message(M.WEIGHTS, 0, "a", "b", fields={"f": value})
    try:
        data = msg.to_bytes()
    except (TypeError, ValueError):
        return
    assert Message.from_bytes(data).fields == msg.fields


# --- negative vectors: flips, truncation, padding ---------------------------------------------

def _header_end(data: bytes) -> int:
    return 8 + struct.unpack("<I", data[4:8])[0]


def _decode_or_malformed(data: bytes):
    """Decoding either succeeds or raises MalformedMessage; any other exception fails the test."""
    try:
        return Message.from_bytes(data)
    except MalformedMessage:
        return None


def _is_case_flip(old: int, new: int) -> bool:
    return old ^ new == 0x20 and chr(old).isalpha() and chr(new).isalpha()


def _check_flip(msg: Message, data: bytes, pos: int, xor: int) -> None:
    flipped = bytearray(data)
    flipped[pos] ^= xor
    got = _decode_or_malformed(bytes(flipped))
    if got is not None and same(got, msg):
        # the one known way a flip goes unnoticed: the letter case of a \\u escape or of a float
        # exponent in the JSON header (upper-case hex in a bytes field is refused)
        assert _is_case_flip(data[pos], flipped[pos]) and pos >= 8, f"flip at {pos} ^{xor:#x} went unnoticed"


@pytest.mark.parametrize("xor", [0x01, 0x02, 0x20, 0x40, 0x80, 0xFF])
def test_every_single_byte_flip_in_magic_or_header_is_refused_or_changes_the_message(xor):
    data = REPRESENTATIVE.to_bytes()
    for pos in range(_header_end(data)):
        _check_flip(REPRESENTATIVE, data, pos, xor)


def test_every_flip_in_the_magic_or_the_length_is_refused():
    data = REPRESENTATIVE.to_bytes()
    for pos in range(8):
        for xor in range(1, 256):
            flipped = bytearray(data)
            flipped[pos] ^= xor
            with pytest.raises(MalformedMessage):
                Message.from_bytes(bytes(flipped))


@settings(max_examples=200, deadline=None)
@given(msg=messages(), data=st.data())
def test_random_flips_in_the_header_of_random_messages(msg, data):
    raw_bytes = msg.to_bytes()
    pos = data.draw(st.integers(0, _header_end(raw_bytes) - 1))
    xor = data.draw(st.integers(1, 255))
    _check_flip(msg, raw_bytes, pos, xor)


def test_every_truncation_is_refused():
    data = REPRESENTATIVE.to_bytes()
    for cut in range(len(data)):
        with pytest.raises(MalformedMessage):
            Message.from_bytes(data[:cut])


@settings(max_examples=60, deadline=None)
@given(msg=messages(), data=st.data())
def test_truncating_or_appending_to_a_random_message_is_refused(msg, data):
    raw_bytes = msg.to_bytes()
    cut = data.draw(st.integers(0, len(raw_bytes) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(MalformedMessage):
        Message.from_bytes(raw_bytes[:cut])
    with pytest.raises(MalformedMessage, match="trailing bytes"):
        Message.from_bytes(raw_bytes + extra)


def test_an_upper_case_hex_digit_in_a_bytes_field_is_refused():
    msg = Message(M.SHARE_KEY, 0, "S0", "w", fields={"seed": b"\xab" * 16})
    data = msg.to_bytes()
    i = data.index(b'"abab')
    flipped = data[: i + 1] + b"A" + data[i + 2 :]
    with pytest.raises(MalformedMessage, match="lower-case hex"):
        Message.from_bytes(flipped)


# --- crafted headers ----------------------------------------------------------------------------

def test_the_good_crafted_header_decodes():
    msg = Message.from_bytes(raw(GOOD_HEADER, GOOD_PAYLOAD))
    assert msg.kind == M.WEIGHTS and msg.round_id == 3 and msg.fields == {"center_weight": 0.5}
    np.testing.assert_array_equal(msg.arrays["weights"], [0.25, 0.75])


def _with(**changes):
    return {**GOOD_HEADER, **changes}


@pytest.mark.parametrize("header,match", [
    (_with(v=2), r"protocol version 2 is not supported \(this is version 1\)"),
    (_with(v=0), r"protocol version 0 is not supported"),
    (_with(kind="share"), r"unknown message kind 'share'"),
    (_with(kind=""), r"unknown message kind ''"),
    (_with(round=-1), r"round id must be non-negative"),
    (_with(arrays=[["weights", "<f4", [2]]]), r"bad array spec \['weights', '<f4', \[2\]\]"),
    (_with(arrays=[["weights", ">f8", [2]]]), r"bad array spec"),
    (_with(arrays=[["weights", "object", [2]]]), r"bad array spec"),
    (_with(arrays=[["weights", "<f8", [-2]]]), r"bad array spec"),
    (_with(arrays=[["weights", "<f8", [True]]]), r"bad array spec"),
    (_with(arrays=[["weights", "<f8", [2.0]]]), r"bad array spec"),
    (_with(arrays=[["weights", "<f8", [2**40]]]), r"bad array spec"),
    (_with(arrays=[["weights", "<f8"]]), r"bad array spec"),
    (_with(arrays=[[1, "<f8", [2]]]), r"bad array spec"),
    (_with(arrays=[["weights", "<f8", 2]]), r"bad array spec"),
    (_with(round=True), r"header field 'round' missing or not int"),
    (_with(round=1.0), r"header field 'round' missing or not int"),
    (_with(v="1"), r"header field 'v' missing or not int"),
    (_with(sender=None), r"header field 'sender' missing or not str"),
    (_with(fields=[]), r"header field 'fields' missing or not dict"),
    ({k: v for k, v in GOOD_HEADER.items() if k != "recipient"}, r"header field 'recipient' missing"),
    (_with(fields={"s": {"hex": "zz"}}), r"a bytes field is not valid hex"),
    (_with(fields={"s": {"hex": "abc"}}), r"a bytes field is not valid hex"),
    (_with(fields={"s": {"hex": 12}}), r"a field object must be \{'hex': lower-case hex digits\}"),
    (_with(fields={"s": [{"hx": "00"}]}), r"a field object must be \{'hex': lower-case hex digits\}"),
    ([1, 2], r"header is not an object"),
    (b'{"v": 1,', r"header is not valid JSON"),
    (b'\xff\xfe\x00', r"header is not valid JSON"),
])
def test_crafted_headers_are_refused_with_a_specific_message(header, match):
    with pytest.raises(MalformedMessage, match=match):
        Message.from_bytes(raw(header, GOOD_PAYLOAD))


def test_bad_version_from_a_message_object():
    data = Message(M.WEIGHTS, 0, "a", "b", version=9).to_bytes()
    with pytest.raises(MalformedMessage, match="protocol version 9 is not supported"):
        Message.from_bytes(data)


@pytest.mark.parametrize("data,match", [
    (b"", "bad magic"), (b"SRB1", "bad magic"), (b"SRB2" + bytes(8), "bad magic"), (b"srb1" + bytes(8), "bad magic"),
    (M.MAGIC + struct.pack("<I", 100) + b"{}", r"header length 100 does not fit a message of 10 bytes"),
    (M.MAGIC + struct.pack("<I", (1 << 20) + 1) + bytes((1 << 20) + 1), r"header length 1048577 does not fit"),
])
def test_bad_magic_and_header_lengths_are_refused(data, match):
    with pytest.raises(MalformedMessage, match=match):
        Message.from_bytes(data)


@pytest.mark.parametrize("payload,match", [
    (GOOD_PAYLOAD[:-1], r"array 'weights' needs 16 bytes, 15 left"),
    (b"", r"array 'weights' needs 16 bytes, 0 left"),
    (GOOD_PAYLOAD + b"\x00", r"1 trailing bytes after the last array"),
])
def test_payload_sizes_are_checked(payload, match):
    with pytest.raises(MalformedMessage, match=match):
        Message.from_bytes(raw(GOOD_HEADER, payload))


@pytest.mark.parametrize("data", [
    raw(_with(arrays=[["weights", ["<f8"], [2]]])),
    raw(_with(arrays=[["weights", {"<f8": 1}, [2]]])),
    raw(_with(arrays=[["weights", "<u8", [2**32, 2**32]]])),
    raw(_with(arrays=[["weights", "|u1", [2**32, 2**31, 2]]])),
    raw(b"[" * 100_000),
    raw(b'{"v":1,"kind":"weights","round":' + b"9" * 5000 + b',"sender":"a","recipient":"b","fields":{},"arrays":[]}'),
], ids=["dtype-list", "dtype-dict", "shape-wraps-to-0", "shape-wraps-u1", "deep-json", "huge-int"])
def test_crafted_headers_raise_only_malformed_message(data):
    with pytest.raises(MalformedMessage):
        Message.from_bytes(data)


@settings(max_examples=100, deadline=None)
@given(msg=messages())
def test_the_in_memory_shortcut_is_the_wire_encoding(msg):
    """What the in-process channel hands over without serialising equals the decoded bytes, its size is
    the encoding's, and the receiver cannot write into the sender's arrays."""
    data = msg.to_bytes()
    assert msg.wire_size() == len(data)
    back = msg.detached()
    assert same(back, Message.from_bytes(data))
    assert all(not a.flags.writeable for a in back.arrays.values())


def test_the_in_memory_channel_counts_the_same_bytes_either_way():
    from secrobust.transport.channel import InMemoryChannel
    counts = []
    for serialize in (False, True):
        ch = InMemoryChannel(serialize=serialize)
        ch.send(REPRESENTATIVE)
        got = ch.receive("worker:3", REPRESENTATIVE.kind)
        assert same(got, REPRESENTATIVE)
        counts.append(dict(ch.stats.bytes_sent))
    assert counts[0] == counts[1] == {"S0": len(REPRESENTATIVE.to_bytes())}
