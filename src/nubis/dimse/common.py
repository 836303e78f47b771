"""What the DIMSE handlers share: statuses, the query models, and small helpers.

The lowest of the handler modules: nubis.dimse.handlers (the event table and C-ECHO, C-FIND,
N-ACTION), nubis.dimse.receive (C-STORE) and nubis.dimse.retrieve (C-MOVE, C-GET) import from
here, and it imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

__all__ = [
    "CANCEL",
    "IDENTIFIER_MISMATCH",
    "NOT_AUTHORIZED",
    "PAGE",
    "PARTITION",
    "PENDING",
    "PROCESSING_FAILURE",
    "SUB_OPERATIONS_IMPOSSIBLE",
    "SUCCESS",
    "UNKNOWN_DESTINATION",
    "identifier_text",
    "peer_name",
    "query_model",
    "status_ds",
]

# The partition C-FIND identifiers are parsed into; the services replace it with the caller's
# tenant (nubis.services.query), so it never decides what a caller sees.
PARTITION = "default"
PAGE = 1000  # C-FIND and retrieves walk the index a page at a time, so memory stays bounded

# Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C.4.2 general statuses).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124  # PS3.7 Annex C: Refused: Not authorized
IDENTIFIER_MISMATCH = 0xA900  # Identifier does not match SOP Class
UNKNOWN_DESTINATION = 0xA801
SUB_OPERATIONS_IMPOSSIBLE = 0xA702  # Refused: Out of Resources - Unable to perform sub-operations
PROCESSING_FAILURE = 0x0110

_PATIENT_ROOT = {
    "1.2.840.10008.5.1.4.1.2.1.1",  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2",  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # GET
}


def query_model(event: Event) -> str:
    """The information model of a C-FIND, C-MOVE or C-GET request: ``patient`` (Patient Root)
    or ``study`` (Study Root), by its SOP class (PS3.4 C.6)."""
    return "patient" if str(event.request.AffectedSOPClassUID) in _PATIENT_ROOT else "study"


def peer_name(assoc: Association) -> str:
    """The calling AE and its address, for the log."""
    r = assoc.requestor
    return f"{r.ae_title.strip()}@{r.address}:{r.port}"


def status_ds(status: int, comment: str) -> Dataset:
    """A response status with its Error Comment."""
    ds = Dataset()
    ds.Status = status
    # Error Comment is LO: at most 64 characters (PS3.7 C.4.2.1.2).
    ds.ErrorComment = comment[:64]
    return ds


def identifier_text(identifier: Dataset) -> str:
    """The C-FIND / retrieve identifier as text, for the Query audit record."""
    return "\n".join(f"{e.keyword or e.tag}={e.value}" for e in identifier if e.tag.group != 2)
