"""DIMSE command sets encoded directly (PS3.7 6.3.1, Annex E), for the messages nubis sends.

pynetdicom turns every outgoing primitive into a pydicom Dataset (one ``setattr`` per element),
encodes it once to learn the Command Group Length and again to send it: about 1 ms of CPU for
a C-STORE or C-FIND response of ten elements, as much as the rest of pynetdicom's work on the
message. A command set is a flat list of group 0000 elements in Implicit VR Little Endian with
a handful of VRs, so it is written here with ``struct`` in a few microseconds; the result is
byte-for-byte what pynetdicom sends (tests/unit/test_dimse_commands.py compares every message
type). Anything this encoder does not write exactly as pydicom would (non-ASCII text, a
value of an unexpected type) returns ``None`` and the caller uses pynetdicom's own path.

A data set may also come as a stream of chunks (:func:`data_set_p_data`): a large stored
object is cut into fragments as it is read, never held whole.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from io import BytesIO
from typing import Any, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pynetdicom.dimse_messages import (
    _COMMAND_SET_KEYWORDS,
    _DATASET_KEYWORDS,
    _MESSAGE_TYPES,
    C_STORE_RQ,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

# keyword -> (element number in group 0000, VR)
_ELEMENTS: dict[str, tuple[int, str]] = {}
for _keywords in _COMMAND_SET_KEYWORDS.values():
    for _keyword in _keywords:
        _tag = tag_for_keyword(_keyword)
        assert _tag is not None and _tag >> 16 == 0
        _ELEMENTS[_keyword] = (_tag & 0xFFFF, dictionary_VR(_tag))
# message name ("C-STORE-RSP") -> Command Field
_COMMAND_FIELD = {name: field for field, (name, _cls) in _MESSAGE_TYPES.items()}
_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")


def _value(vr: str, value: Any) -> bytes | None:
    """``value`` as pydicom writes it in Implicit VR Little Endian; None if unsure."""
    if value is None:
        return b""
    if vr == "US":
        return _US.pack(value) if type(value) is int and 0 <= value <= 0xFFFF else None
    if vr == "UL":
        return _UL.pack(value) if type(value) is int and 0 <= value <= 0xFFFFFFFF else None
    if vr in ("UI", "AE", "LO"):
        if not isinstance(value, str) or not value.isascii() or "\\" in value:
            return None
        data = value.encode("ascii")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        return data
    if vr == "AT":
        tags = value if isinstance(value, list) else [value]
        if not all(isinstance(t, int) and 0 <= t <= 0xFFFFFFFF for t in tags):
            return None
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    return None


def encode_command(message: str, primitive: Any, has_data_set: bool) -> bytes | None:
    """The encoded command set of ``message`` (e.g. "C-STORE-RSP") for ``primitive``, as
    pynetdicom's ``primitive_to_message`` and ``encode`` would make it; None to fall back."""
    parts: list[tuple[int, bytes]] = []
    for keyword in _COMMAND_SET_KEYWORDS[message]:
        if keyword == "CommandGroupLength":
            continue
        if keyword == "CommandField":
            value: Any = _COMMAND_FIELD[message]
        elif keyword == "CommandDataSetType":
            value = 0x0001 if has_data_set else 0x0101
        elif hasattr(primitive, keyword):
            value = getattr(primitive, keyword)
            if value is None:
                continue  # pynetdicom deletes elements the primitive leaves unset
        else:
            value = None  # pynetdicom keeps these, empty
        element, vr = _ELEMENTS[keyword]
        encoded = _value(vr, value)
        if encoded is None:
            return None
        parts.append((element, encoded))
    parts.sort(key=lambda part: part[0])
    body = b"".join(_HEADER.pack(0, e, len(v)) + v for e, v in parts)
    return _HEADER.pack(0, 0, 4) + _UL.pack(len(body)) + body


class _Sent:
    """Mixin for the message given to EVT_DIMSE_SENT handlers: its ``command_set`` Dataset is
    built (pynetdicom's way) only if a handler reads it."""

    _primitive: Any
    _stock: type[DIMSEMessage]

    @property
    def command_set(self) -> Any:
        built = self.__dict__.get("_command_set")
        if built is None:
            stock = self._stock()
            stock.primitive_to_message(self._primitive)
            built = self.__dict__["_command_set"] = stock.command_set
        return built

    @command_set.setter
    def command_set(self, value: Any) -> None:
        self.__dict__["_command_set"] = value


# Same class names as pynetdicom's (handlers look at type(message).__name__), lazy command set.
_SENT_CLASSES: dict[type, type] = {
    cls: type(cls.__name__, (_Sent, cls), {"__module__": __name__, "_stock": cls})
    for _name, cls in _MESSAGE_TYPES.values()
}


def fast_message(
    message_class: type[DIMSEMessage], primitive: Any, context_id: int
) -> tuple[DIMSEMessage, bytes, bytes] | None:
    """The message for EVT_DIMSE_SENT, its encoded command set and its data set bytes, or
    None when pynetdicom must encode it (a data set sent from a file, an unusual value)."""
    if getattr(primitive, "_dataset_path", None):
        return None
    keyword = _DATASET_KEYWORDS.get(message_class.__name__)
    data_set: BytesIO | None = getattr(primitive, keyword) if keyword else BytesIO()
    # pynetdicom: Data Set Type is "present" for any data set object, even an empty one.
    has_data_set = bool(data_set) if keyword else False
    command = encode_command(message_class.__name__.replace("_", "-"), primitive, has_data_set)
    if command is None:
        return None
    msg: Any = object.__new__(_SENT_CLASSES[message_class])
    msg._primitive = primitive
    msg.context_id = context_id
    msg.encoded_command_set = BytesIO()
    msg.data_set = data_set
    msg._data_set_path = None
    msg._data_set_file = None
    return msg, command, data_set.getvalue() if data_set is not None else b""


def streamed_store_request(primitive: C_STORE, context_id: int) -> tuple[C_STORE_RQ, bytes]:
    """The C-STORE-RQ message (for EVT_DIMSE_SENT) and its encoded command set, for a request
    whose data set follows from a stream (:func:`data_set_p_data`), not from ``DataSet``.

    pynetdicom's own encoding: it costs a millisecond, once per object large enough to be
    streamed."""
    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)
    msg.context_id = context_id
    # pynetdicom says a data set follows only when the primitive holds one (or a file path).
    msg.command_set.CommandDataSetType = 0x0001
    return msg, cast(bytes, encode(msg.command_set, True, True))


def p_data(context_id: int, command: bytes, data_set: bytes, max_pdu: int) -> Iterator[P_DATA]:
    """P-DATA primitives for one message, one PDV each, as pynetdicom's ``encode_msg``:
    the command fragments (control header 01, last 03), then the data set's (00, last 02)."""
    yield from _fragments(context_id, (command,), max_pdu, 0x01, 0x03)
    yield from data_set_p_data(context_id, (data_set,), max_pdu)


def data_set_p_data(context_id: int, chunks: Iterable[bytes], max_pdu: int) -> Iterator[P_DATA]:
    """P-DATA primitives for a data set that comes as ``chunks``, cut into fragments of the
    peer's maximum PDU length as the chunks arrive (control header 00, last 02).

    A fragment is only made the last once the chunks have run out: if they stop with an
    error (a stream that withholds its last chunk when the object fails its digest), the
    message is never completed."""
    return _fragments(context_id, chunks, max_pdu, 0x00, 0x02)


def _fragments(
    context_id: int, chunks: Iterable[bytes], max_pdu: int, more: int, last: int
) -> Iterator[P_DATA]:
    held: bytes | memoryview | None = None
    # A PDV item is its 4-byte length, the context ID and the control header (PS3.8 9.3.5.1).
    for fragment in _cut(chunks, max_pdu - 6 if max_pdu else 0):
        if held is not None:
            yield _pdv(context_id, more, held)
        held = fragment
    if held is not None:
        yield _pdv(context_id, last, held)


def _cut(chunks: Iterable[bytes], size: int) -> Iterator[bytes | memoryview]:
    """``chunks`` cut into pieces of ``size`` bytes (the last may be shorter); a size of 0
    (the peer set no limit, PS3.8 D.1) keeps the chunks as they come."""
    carry = b""
    for chunk in chunks:
        if not size:
            if chunk:
                yield chunk
            continue
        data = carry + chunk if carry else chunk
        whole = len(data) - len(data) % size
        view = memoryview(data)
        for offset in range(0, whole, size):
            yield view[offset : offset + size]
        carry = bytes(view[whole:])
    if carry:
        yield carry


def _pdv(context_id: int, header: int, fragment: bytes | memoryview) -> P_DATA:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, bytes((header,)) + fragment))
    return pdata
