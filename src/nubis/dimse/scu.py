"""A small DIMSE client (SCU) for echo, find, move, get and store to remote AEs.

Used by ``nubis dimse ...`` and, later, by migration and forwarding. Each call opens one
association, does its work and releases it; failures to associate raise :class:`DimseError`
with the reason, DIMSE statuses are returned for the caller to judge.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    _STORAGE_CLASSES,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from nubis.dimse.reactor import RaceFreeAE

_MODELS = {
    "patient": (
        PatientRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
    ),
    "study": (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
    ),
}


# Identifiers are patient data, which no log line may carry: pynetdicom would log the request
# and response identifiers at INFO.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


class DimseError(RuntimeError):
    """The association could not be established or broke off."""


@dataclass(frozen=True)
class Remote:
    """Where a remote AE listens; ``tls`` is a client SSLContext for DICOM TLS (PS3.15 B.12)."""

    host: str
    port: int
    ae_title: str = "ANY-SCP"
    calling_ae_title: str = "NUBIS"
    tls: ssl.SSLContext | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RetrieveResult:
    """Final status and sub-operation counts of a C-MOVE or C-GET (PS3.4 C.4.2.3.1)."""

    status: int
    completed: int
    failed: int
    warning: int
    pending_responses: int
    received: list[Path] = field(default_factory=list)


def client_tls(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """Client context: TLS 1.2/1.3, server verified against ``ca``, optional client cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # DICOM peers are named by AE title and address, not DNS
    if ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def _associate(ae: RaceFreeAE, remote: Remote, **kwargs: Any) -> Any:
    tls_args = (remote.tls, "") if remote.tls is not None else None
    assoc = ae.associate(
        remote.host, remote.port, ae_title=remote.ae_title, tls_args=tls_args, **kwargs
    )
    if not assoc.is_established:
        how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise DimseError(f"association with {remote.ae_title}@{remote.host}:{remote.port} {how}")
    return assoc


def _ae(remote: Remote) -> RaceFreeAE:
    # Without the race-free pause a fast peer's reply is sometimes taken by the association's
    # own reactor and the call waits out the DIMSE timeout (see reactor.RaceFreePause).
    ae = RaceFreeAE(ae_title=remote.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def echo(remote: Remote) -> int:
    """C-ECHO (PS3.7 9.1.5); returns the status (0x0000 success)."""
    ae = _ae(remote)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, remote)
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()


def find(remote: Remote, identifier: Dataset, *, model: str = "study") -> Iterator[Dataset]:
    """C-FIND (PS3.4 C.4.1): yield each Pending response identifier; raise on a failure."""
    ae = _ae(remote)
    ae.add_requested_context(_MODELS[model][0])
    assoc = _associate(ae, remote)
    try:
        for status, found in assoc.send_c_find(identifier, _MODELS[model][0]):
            code = int(status.Status) if "Status" in status else -1
            if code in (0xFF00, 0xFF01) and found is not None:
                yield found
            elif code not in (0x0000, 0xFE00):
                raise DimseError(f"C-FIND failed with status 0x{code:04X}")
    finally:
        assoc.release()


def move(
    remote: Remote, identifier: Dataset, destination: str, *, model: str = "study"
) -> RetrieveResult:
    """C-MOVE (PS3.4 C.4.2) of the identified objects to AE ``destination``."""
    ae = _ae(remote)
    ae.add_requested_context(_MODELS[model][1])
    assoc = _associate(ae, remote)
    try:
        return _retrieve_result(assoc.send_c_move(identifier, destination, _MODELS[model][1]))
    finally:
        assoc.release()


def get(
    remote: Remote,
    identifier: Dataset,
    out_dir: Path,
    *,
    model: str = "study",
    sop_classes: Iterable[str] | None = None,
) -> RetrieveResult:
    """C-GET (PS3.4 C.4.3): receive the objects on this association into ``out_dir``.

    Proposes the SCP role (PS3.7 D.3.3.4) for ``sop_classes`` (default: the common image
    classes, as many as fit the 128 presentation contexts) in every transfer syntax, and
    writes each object as received, named by its SOP Instance UID.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    received: list[Path] = []

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        path = out_dir / f"{uid}.dcm"
        path.write_bytes(event.encoded_dataset())
        received.append(path)
        return 0x0000

    ae = _ae(remote)
    ae.add_requested_context(_MODELS[model][2])
    classes = list(sop_classes or list(_STORAGE_CLASSES.values())[:127])[:127]
    roles = []
    for uid in classes:
        ae.add_requested_context(uid, [str(t) for t in AllTransferSyntaxes][:100])
        roles.append(build_role(uid, scp_role=True))
    assoc = _associate(ae, remote, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        result = _retrieve_result(assoc.send_c_get(identifier, _MODELS[model][2]))
    finally:
        assoc.release()
    return RetrieveResult(
        result.status,
        result.completed,
        result.failed,
        result.warning,
        result.pending_responses,
        received,
    )


def _retrieve_result(responses: Iterable[tuple[Dataset, Dataset | None]]) -> RetrieveResult:
    pending = 0
    last = Dataset()
    for status, _identifier in responses:
        if "Status" not in status:
            raise DimseError("the peer stopped answering (no status)")
        if int(status.Status) in (0xFF00, 0xFF01):
            pending += 1
        last = status
    return RetrieveResult(
        int(last.get("Status", -1)),
        int(last.get("NumberOfCompletedSuboperations", 0) or 0),
        int(last.get("NumberOfFailedSuboperations", 0) or 0),
        int(last.get("NumberOfWarningSuboperations", 0) or 0),
        pending,
    )


def store(remote: Remote, paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """C-STORE (PS3.4 B.2) each file in its own transfer syntax on one association.

    Each (SOP class, transfer syntax) pair gets its own presentation context, with an
    uncompressed fallback context per class; at most 128 in all (PS3.8 9.3.2).
    """
    files = [Path(p) for p in paths]
    headers = {p: dcmread(p, stop_before_pixels=True) for p in files}
    pairs = dict.fromkeys(
        (str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers.values()
    )
    contexts = [build_context(sop, ts) for sop, ts in pairs]
    for sop in dict.fromkeys(sop for sop, _ in pairs):
        contexts.append(build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ae = _ae(remote)
    assoc = _associate(ae, remote, contexts=contexts[:128])
    results = []
    try:
        for path in files:
            try:
                status = assoc.send_c_store(dcmread(path))
                results.append((path, int(status.Status) if "Status" in status else -1))
            except (ValueError, RuntimeError):
                results.append((path, -1))
    finally:
        assoc.release()
    return results
