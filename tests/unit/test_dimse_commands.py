"""nubis.dimse.commands writes every DIMSE message exactly as pynetdicom does (PS3.7 6.3.1, E)."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom.tag import Tag
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_primitives import (
    C_CANCEL,
    C_ECHO,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    N_ACTION,
    N_CREATE,
    N_DELETE,
    N_EVENT_REPORT,
    N_GET,
    N_SET,
)

from nubis.dimse.commands import (
    data_set_p_data,
    fast_message,
    p_data,
    streamed_store_request,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.826.0.1.3680043.8.498.10199167201980975014564707662818696331"  # odd length
COMMIT = "1.2.840.10008.1.20.1"


def _primitive(cls: type, **values: Any) -> Any:
    primitive = cls()
    for name, value in values.items():
        setattr(primitive, name, value)
    return primitive


def _pdvs(message_class: type, primitive: Any, max_pdu: int) -> list[Any]:
    msg = message_class()
    msg.primitive_to_message(primitive)
    return [p.presentation_data_value_list for p in msg.encode_msg(1, max_pdu)]


CASES: list[tuple[str, Any]] = [
    ("C-ECHO-RQ", _primitive(C_ECHO, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1")),
    (
        "C-ECHO-RSP",
        _primitive(
            C_ECHO, MessageIDBeingRespondedTo=1, AffectedSOPClassUID="1.2.840.10008.1.1", Status=0
        ),
    ),
    (
        "C-STORE-RQ",
        _primitive(
            C_STORE,
            MessageID=7,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=SOP,
            Priority=2,
            MoveOriginatorApplicationEntityTitle="MOVER",
            MoveOriginatorMessageID=3,
            DataSet=BytesIO(b"\x08\x00\x16\x00" * 50_000),
        ),
    ),
    (
        "C-STORE-RSP",
        _primitive(
            C_STORE,
            MessageIDBeingRespondedTo=7,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=SOP,
            Status=0,
        ),
    ),
    (
        "C-STORE-RSP failure",
        _primitive(
            C_STORE,
            MessageIDBeingRespondedTo=7,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=SOP,
            Status=0xA900,
            ErrorComment="data set does not match SOP class",
            OffendingElement=[Tag(0x00080016), Tag(0x00080018)],
        ),
    ),
    (
        "C-FIND-RQ",
        _primitive(
            C_FIND,
            MessageID=2,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
            Priority=0,
            Identifier=BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "),
        ),
    ),
    (
        "C-FIND-RSP pending",
        _primitive(
            C_FIND,
            MessageIDBeingRespondedTo=2,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
            Status=0xFF00,
            Identifier=BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "),
        ),
    ),
    (
        "C-FIND-RSP final",
        _primitive(
            C_FIND,
            MessageIDBeingRespondedTo=2,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1",
            Status=0,
        ),
    ),
    ("C-CANCEL-RQ", _primitive(C_CANCEL, MessageIDBeingRespondedTo=2)),
    (
        "C-MOVE-RQ",
        _primitive(
            C_MOVE,
            MessageID=4,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2",
            Priority=0,
            MoveDestination="STORESCP",
            Identifier=BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "),
        ),
    ),
    (
        "C-MOVE-RSP",
        _primitive(
            C_MOVE,
            MessageIDBeingRespondedTo=4,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2",
            Status=0xFF00,
            NumberOfRemainingSuboperations=10,
            NumberOfCompletedSuboperations=2,
            NumberOfFailedSuboperations=0,
            NumberOfWarningSuboperations=1,
        ),
    ),
    (
        "C-GET-RSP",
        _primitive(
            C_GET,
            MessageIDBeingRespondedTo=5,
            AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.3",
            Status=0xB000,
            NumberOfCompletedSuboperations=2,
            NumberOfFailedSuboperations=1,
            NumberOfWarningSuboperations=0,
            Identifier=BytesIO(b"\x08\x00\x58\x00\x00\x00\x00\x00"),
        ),
    ),
    (
        "N-EVENT-REPORT-RQ",
        _primitive(
            N_EVENT_REPORT,
            MessageID=9,
            AffectedSOPClassUID=COMMIT,
            AffectedSOPInstanceUID="1.2.840.10008.1.20.1.1",
            EventTypeID=1,
            EventInformation=BytesIO(b"\x08\x00\x95\x11\x00\x00\x00\x00"),
        ),
    ),
    (
        "N-EVENT-REPORT-RSP",
        _primitive(
            N_EVENT_REPORT,
            MessageIDBeingRespondedTo=9,
            AffectedSOPClassUID=COMMIT,
            AffectedSOPInstanceUID="1.2.840.10008.1.20.1.1",
            EventTypeID=1,
            Status=0,
        ),
    ),
    (
        "N-ACTION-RSP",
        _primitive(
            N_ACTION,
            MessageIDBeingRespondedTo=8,
            AffectedSOPClassUID=COMMIT,
            AffectedSOPInstanceUID="1.2.840.10008.1.20.1.1",
            ActionTypeID=1,
            Status=0,
        ),
    ),
    (
        "N-ACTION-RQ",
        _primitive(
            N_ACTION,
            MessageID=8,
            RequestedSOPClassUID=COMMIT,
            RequestedSOPInstanceUID="1.2.840.10008.1.20.1.1",
            ActionTypeID=1,
            ActionInformation=BytesIO(b"\x08\x00\x95\x11\x00\x00\x00\x00"),
        ),
    ),
    (
        "N-GET-RQ",
        _primitive(
            N_GET,
            MessageID=3,
            RequestedSOPClassUID=COMMIT,
            RequestedSOPInstanceUID="1.2.3",
            AttributeIdentifierList=[Tag(0x00100010)],
        ),
    ),
    (
        "N-SET-RSP",
        _primitive(
            N_SET,
            MessageIDBeingRespondedTo=3,
            AffectedSOPClassUID=COMMIT,
            AffectedSOPInstanceUID="1.2.3",
            Status=0x0106,
            ErrorID=5,
            ErrorComment="odd",
        ),
    ),
    (
        "N-CREATE-RSP",
        _primitive(
            N_CREATE,
            MessageIDBeingRespondedTo=3,
            AffectedSOPClassUID=COMMIT,
            AffectedSOPInstanceUID="1.2.3",
            Status=0,
            AttributeList=BytesIO(),  # an empty data set object: Data Set Type still "present"
        ),
    ),
    (
        "N-DELETE-RSP",
        _primitive(
            N_DELETE,
            MessageIDBeingRespondedTo=3,
            AffectedSOPClassUID=COMMIT,
            AffectedSOPInstanceUID="1.2.3",
            Status=0,
        ),
    ),
]


@pytest.mark.parametrize("max_pdu", [0, 16384, 64, 131072])
@pytest.mark.parametrize(("name", "primitive"), CASES, ids=[name for name, _ in CASES])
def test_same_pdvs_as_pynetdicom(name: str, primitive: Any, max_pdu: int) -> None:
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message_class = table[type(primitive)]
    fast = fast_message(message_class, primitive, 1)
    assert fast is not None
    msg, command, data = fast
    got = [p.presentation_data_value_list for p in p_data(1, command, data, max_pdu)]
    for data_set in vars(primitive).values():
        if isinstance(data_set, BytesIO):
            data_set.seek(0)
    assert got == _pdvs(message_class, primitive, max_pdu)
    # What an EVT_DIMSE_SENT handler sees is pynetdicom's message, command set and all.
    assert type(msg).__name__ == message_class.__name__
    assert isinstance(msg, message_class)
    stock = message_class()
    stock.primitive_to_message(primitive)
    assert msg.command_set == stock.command_set


def test_text_it_cannot_encode_falls_back() -> None:
    primitive = _primitive(
        C_STORE,
        MessageIDBeingRespondedTo=7,
        AffectedSOPClassUID=CT,
        AffectedSOPInstanceUID=SOP,
        Status=0xA700,
        ErrorComment="kein Speicherplatz für Müller",
    )
    assert fast_message(_RSP_TO_MESSAGE[C_STORE], primitive, 1) is None


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` in chunks of the given sizes, cycled (a stream's reads do not line up with
    fragments)."""
    out, offset, turn = [], 0, 0
    while offset < len(data):
        size = sizes[turn % len(sizes)]
        out.append(data[offset : offset + size])
        offset, turn = offset + size, turn + 1
    return out


@pytest.mark.parametrize("max_pdu", [64, 16384, 131072])
@pytest.mark.parametrize("sizes", [[1 << 20], [1, 57, 4096], [58], [200_000, 3]])
def test_streamed_c_store_same_pdvs_as_pynetdicom(max_pdu: int, sizes: list[int]) -> None:
    """A C-STORE whose data set comes as a stream goes out exactly as pynetdicom sends the same
    data set from memory: same command set, same fragments, same control headers. (With no
    maximum PDU length pynetdicom sends the data set as one fragment; a stream sends its
    chunks as they come, which PS3.8 allows as well.)"""
    data = bytes(range(256)) * 781 + b"\x01\x02"  # not a multiple of any fragment size
    primitive = _primitive(
        C_STORE,
        MessageID=7,
        AffectedSOPClassUID=CT,
        AffectedSOPInstanceUID=SOP,
        Priority=2,
        MoveOriginatorApplicationEntityTitle="MOVER",
        MoveOriginatorMessageID=3,
    )
    msg, command = streamed_store_request(primitive, 1)
    got = [p.presentation_data_value_list for p in p_data(1, command, b"", max_pdu)]
    got += [
        p.presentation_data_value_list for p in data_set_p_data(1, _chunks(data, sizes), max_pdu)
    ]
    primitive.DataSet = BytesIO(data)
    assert got == _pdvs(_RQ_TO_MESSAGE[C_STORE], primitive, max_pdu)
    assert isinstance(msg, _RQ_TO_MESSAGE[C_STORE])
    assert msg.command_set.CommandDataSetType == 0x0001


def test_a_stream_that_fails_never_completes_the_data_set() -> None:
    """A stream that stops with an error (a digest check withholding the last chunk) leaves
    every fragment sent marked "more to come": the peer never sees the last one."""

    def failing() -> Iterator[bytes]:
        yield b"\x00" * 100
        yield b"\x00" * 100
        raise OSError("digest mismatch")

    sent = []
    with pytest.raises(OSError):
        for pdata in data_set_p_data(1, failing(), 64):
            sent.append(pdata.presentation_data_value_list[0][1][0])
    assert sent and set(sent) == {0x00}
