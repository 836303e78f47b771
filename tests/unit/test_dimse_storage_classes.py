"""The Storage SCP takes every storage SOP class (PS3.4 B.5 leaves the choice to the SCP):
retired and private classes are accepted at association and their C-STOREs reach the
handler; other services' SOP classes stay rejected (PS3.8 9.3.3.2, result 0x03 "abstract
syntax not supported"), as before."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
)
from pynetdicom.transport import ThreadedAssociationServer

from nubis.dimse.reactor import EventDrivenRequestHandler
from nubis.dimse.server import STORAGE_SYNTAXES, build_ae
from nubis.dimse.storage_classes import STORAGE_CLASSES, OpenStorage, is_storage_class

US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound Image Storage (Retired)
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"
GE_PRIVATE = "1.2.840.113619.4.26"
HANGING_PROTOCOL = "1.2.840.10008.5.1.4.38.1"  # Non-Patient Object Storage, another service


def test_which_classes_are_storage() -> None:
    for uid in (US_RETIRED, "1.2.840.10008.5.1.4.1.1.12.3", "1.2.840.10008.5.1.4.1.1.5"):
        assert uid in STORAGE_CLASSES  # retired classes of pydicom's dictionary
    assert CTImageStorage in STORAGE_CLASSES
    assert is_storage_class(SIEMENS_CSA_NON_IMAGE) and is_storage_class(GE_PRIVATE)
    for uid in (
        ModalityWorklistInformationFind,  # a service pynetdicom and pydicom know
        "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage: DICOMDIR, media only
        HANGING_PROTOCOL,
        ExplicitVRLittleEndian,  # a transfer syntax
        "1.2.840.10008.1.1",  # Verification
        "1.2.03",  # leading zero (PS3.5 9.1)
        "1.2." + "3" * 70,  # over 64 characters
        "1.2.abc",
    ):
        assert not is_storage_class(uid), uid


@dataclass
class Scp:
    port: int
    stored: list[tuple[str, str]]
    ae: Any


@pytest.fixture(scope="module")
def scp() -> Iterator[Scp]:
    """The DIMSE server's AE (server.build_ae) on a loopback port; C-STOREs are recorded
    (abstract syntax of the context, SOP Class UID of the request) and answered 0x0000."""
    stored: list[tuple[str, str]] = []

    def on_store(event: Any) -> int:
        stored.append((str(event.context.abstract_syntax), str(event.request.AffectedSOPClassUID)))
        return 0x0000

    ae = build_ae("NUBIS", max_associations=4, response_seconds=60)
    server = ae.make_server(
        ("127.0.0.1", 0),
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        server_class=ThreadedAssociationServer,
        request_handler=EventDrivenRequestHandler,
    )
    ae._servers.append(server)  # as AE.start_server does; shutdown() takes it off
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Scp(server.server_address[1], stored, ae)
    finally:
        server.shutdown()


def _dataset(sop_class: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def test_retired_and_private_classes_are_accepted_and_stored(
    scp: Scp,
) -> None:
    port, stored = scp.port, scp.stored
    proposed = [
        US_RETIRED,
        SIEMENS_CSA_NON_IMAGE,
        GE_PRIVATE,
        ModalityWorklistInformationFind,
        HANGING_PROTOCOL,
        ExplicitVRLittleEndian,
    ]
    ae = AE("MODALITY")
    contexts = [build_context(uid, ExplicitVRLittleEndian) for uid in proposed]
    # The caller as SCP of the GE class only (a C-GET's receiver): nubis then plays SCU.
    roles = [build_role(GE_PRIVATE, scu_role=False, scp_role=True)]
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="NUBIS", ext_neg=roles)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax): cx for cx in assoc.accepted_contexts}
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        assert set(accepted) == {US_RETIRED, SIEMENS_CSA_NON_IMAGE, GE_PRIVATE}
        assert rejected == {
            ModalityWorklistInformationFind: 0x03,
            HANGING_PROTOCOL: 0x03,
            ExplicitVRLittleEndian: 0x03,
        }
        # As for a standard class (server.py: storage contexts with both roles): the caller
        # is SCU by default, and SCP only where it asked to be (nubis then sends, C-GET).
        assert accepted[SIEMENS_CSA_NON_IMAGE].as_scu
        assert (accepted[GE_PRIVATE].as_scu, accepted[GE_PRIVATE].as_scp) == (False, True)
        for uid in (US_RETIRED, SIEMENS_CSA_NON_IMAGE):
            status = assoc.send_c_store(_dataset(uid))
            assert status.Status == 0x0000, uid
    finally:
        assoc.release()
    assert stored[-2:] == [(US_RETIRED, US_RETIRED), (SIEMENS_CSA_NON_IMAGE, SIEMENS_CSA_NON_IMAGE)]


def test_the_server_list_stays_as_it_was(scp: Scp) -> None:
    """What one association accepted beyond the standard list is not added to the AE's own
    contexts, which every association starts from (nubis.dimse.reactor)."""
    ae = AE("MODALITY")
    ae.add_requested_context(GE_PRIVATE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="NUBIS")
    assert assoc.is_established and len(assoc.accepted_contexts) == 1
    assoc.release()
    uids = {str(cx.abstract_syntax) for cx in scp.ae.supported_contexts}
    assert set(STORAGE_CLASSES) <= uids and GE_PRIVATE not in uids


def test_proposed_contexts_take_the_storage_syntaxes_in_order() -> None:
    storage = OpenStorage(STORAGE_SYNTAXES, scu_role=True, scp_role=True)
    (added,) = storage.contexts_for([build_context(GE_PRIVATE)], [build_context(CTImageStorage)])
    assert [str(ts) for ts in added.transfer_syntax] == list(STORAGE_SYNTAXES)
    assert (added.scu_role, added.scp_role) == (True, True)
    assert (
        storage.contexts_for([build_context(CTImageStorage)], [build_context(CTImageStorage)]) == []
    )
