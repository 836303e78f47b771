"""Which SOP classes a nubis Storage SCP accepts: every storage object, as an archive must.

PS3.4 B.5 leaves the choice of SOP classes to the SCP, and what a legacy archive holds is not
only today's standard list: retired classes (Ultrasound Image Storage (Retired), Nuclear
Medicine Image Storage (Retired), X-Ray Angiographic Bi-Plane...) and vendors' private ones
(Siemens CSA Non-Image 1.3.12.2.1107.5.9.1, GE's 1.2.840.113619.4.*). A context refused at
association loses the object before any C-STORE could say why. So an acceptor accepts, for
storage:

(a) every storage SOP class of pydicom's UID dictionary, retired ones included, and
    pynetdicom's (:data:`STORAGE_CLASSES`, offered as supported contexts from the start);
(b) any other abstract syntax the requestor proposes that is a well-formed UID (PS3.5 9.1)
    known neither to pydicom nor to pynetdicom as something else (:func:`is_storage_class`):
    private and newer classes. Their contexts are made per association from the proposal
    (:class:`OpenStorageACSE`), at most the 128 a requestor may propose, so the AE's own list
    is neither grown nor copied.

A UID that names another service (Q/R, commitment, worklist, Non-Patient Object Storage,
print...), a transfer syntax or a well-known instance stays unsupported and is rejected as
before (abstract syntax not supported, PS3.8 9.3.3.2). Contexts of (a) and (b) take the
acceptor's storage transfer syntaxes and roles (:class:`OpenStorage`), so C-GET may send such
objects back on the caller's association. pynetdicom serves a C-STORE by its SOP class and
knows only its own list: for the others the association maps the class to the Storage Service
Class, as a requestor's SOP Class Common Extended Negotiation would (PS3.7 D.3.3.6).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydicom.uid import RE_VALID_UID, UID, UID_dictionary
from pynetdicom.acse import ACSE
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import _STORAGE_CLASSES, uid_to_service_class

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity

__all__ = ["STORAGE_CLASSES", "OpenStorage", "OpenStorageACSE", "is_storage_class"]

log = logging.getLogger("nubis.dimse")

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: media only (PS3.10), never sent


def _standard_storage_classes() -> tuple[str, ...]:
    """pynetdicom's storage classes, then the other storage SOP classes of pydicom's UID
    dictionary: those named "... Storage" that no other service claims (pynetdicom routes
    Non-Patient Object Storage and Storage Commitment to their own service classes)."""
    found = dict.fromkeys(str(uid) for uid in _STORAGE_CLASSES.values())
    for uid, (name, kind, *_) in UID_dictionary.items():
        if (
            kind == "SOP Class"
            and "Storage" in name
            and "Storage Commitment" not in name
            and uid != _MEDIA_STORAGE_DIRECTORY
            and uid_to_service_class(uid) in (ServiceClass, StorageServiceClass)
        ):
            found.setdefault(uid)
    return tuple(found)


STORAGE_CLASSES = _standard_storage_classes()
_STANDARD = frozenset(STORAGE_CLASSES)
_PYNETDICOM_STORAGE = frozenset(str(uid) for uid in _STORAGE_CLASSES.values())


def is_storage_class(uid: str) -> bool:
    """Whether a proposed abstract syntax is taken for storage: one of :data:`STORAGE_CLASSES`,
    or a well-formed UID (at most 64 characters, PS3.5 9.1) that neither pydicom's dictionary
    nor pynetdicom knows as anything (a private or newer storage class)."""
    if uid in _STANDARD:
        return True
    if uid in UID_dictionary:
        return False  # another service's SOP class, a transfer syntax, a well-known instance
    if len(uid) > 64 or not RE_VALID_UID.match(uid):
        return False
    return uid_to_service_class(uid) is ServiceClass  # pynetdicom knows no service for it


class OpenStorage:
    """An acceptor's storage contexts: the transfer syntaxes (in the acceptor's order of
    preference) and roles every storage class is accepted with, standard or not."""

    def __init__(
        self,
        transfer_syntaxes: Sequence[str],
        *,
        scu_role: bool | None = None,
        scp_role: bool | None = None,
    ) -> None:
        self.transfer_syntaxes = [str(ts) for ts in transfer_syntaxes]
        self.scu_role = scu_role
        self.scp_role = scp_role

    def install(self, ae: ApplicationEntity) -> None:
        """Support :data:`STORAGE_CLASSES` on ``ae``, and any other storage class its
        associations are proposed (made by nubis.dimse.reactor.EventDrivenRequestHandler)."""
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(
                uid, self.transfer_syntaxes, scu_role=self.scu_role, scp_role=self.scp_role
            )
        ae.open_storage = self  # type: ignore[attr-defined]

    def contexts_for(
        self, proposed: Iterable[PresentationContext], supported: Iterable[PresentationContext]
    ) -> list[PresentationContext]:
        """Supported contexts for the storage classes among ``proposed`` that ``supported``
        lacks, one per abstract syntax."""
        known = {str(cx.abstract_syntax) for cx in supported}
        added: list[PresentationContext] = []
        for cx in proposed:
            uid = str(cx.abstract_syntax)
            if uid in known or not is_storage_class(uid):
                continue
            known.add(uid)
            context = build_context(uid, self.transfer_syntaxes)
            context.scu_role = self.scu_role
            context.scp_role = self.scp_role
            added.append(context)
        return added


class OpenStorageACSE(ACSE):
    """pynetdicom's ACSE, which as acceptor first adds to the association's supported
    contexts the storage classes the requestor proposes beyond the AE's own (when the AE has
    an :class:`OpenStorage`), and maps every storage class pynetdicom does not know to the
    Storage Service Class, so their C-STOREs reach the C-STORE handler."""

    def _negotiate_as_acceptor(self) -> None:
        storage: OpenStorage | None = getattr(self.assoc.ae, "open_storage", None)
        if storage is not None:
            supported = self.acceptor.supported_contexts
            added = storage.contexts_for(self._proposed(), supported)
            if added:
                log.debug(
                    "storage classes accepted beyond the standard list: %s",
                    ", ".join(str(cx.abstract_syntax) for cx in added),
                )
                # A new list: the association's own (nubis.dimse.reactor), not the AE's.
                self.acceptor.supported_contexts = [*supported, *added]
        super()._negotiate_as_acceptor()

    def _check_sop_class_common_extended(self) -> dict[UID, SOPClassCommonExtendedNegotiation]:
        items = super()._check_sop_class_common_extended()
        if getattr(self.assoc.ae, "open_storage", None) is None:
            return items
        for cx in self._proposed():
            uid = cx.abstract_syntax
            if uid in items or uid in _PYNETDICOM_STORAGE or not is_storage_class(str(uid)):
                continue
            item = SOPClassCommonExtendedNegotiation()
            item.sop_class_uid = uid
            item.service_class_uid = StorageServiceClass.uid
            items[uid] = item
        return items

    def _proposed(self) -> list[Any]:
        request = self.requestor.primitive  # the A-ASSOCIATE-RQ, received before negotiation
        return list(request.presentation_context_definition_list) if request else []
