"""Audit export: DICOM audit messages over syslog/TLS, and FHIR AuditEvent JSON.

- :func:`dicom_xml` renders a record as a DICOM audit message, the ``AuditMessage`` XML of
  PS3.15 A.5.1 (RFC 3881 fields; coded values as ``csd-code``/``codeSystemName``/
  ``originalText``).
- :func:`fhir_audit_event` renders it as a FHIR R4 ``AuditEvent`` resource (the DICOM to FHIR
  mapping of the FHIR AuditEvent page: EventID -> type, ActiveParticipant -> agent,
  AuditSourceIdentification -> source, ParticipantObjectIdentification -> entity).
- :class:`SyslogForwarder` sends records to a collector as RFC 5424 messages over TLS with
  RFC 5425 octet-counting framing (PS3.15 A.5.2, IHE ATNA), from a persistent cursor kept in
  the index: while the collector is down records wait in the log, and are sent once it is back.
  Signed checkpoints are forwarded too, so a copy of the chain heads lives off the machine.

nubis's own fields (front door, request ID) have no place in the DICOM schema: they travel as
``ParticipantObjectDetail`` entries in the XML and as extensions in FHIR.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import select
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nubis.model.audit import AuditEvent, Code, format_time
from nubis.security.audit import AuditRecord, AuditTrail, Checkpoint

log = logging.getLogger(__name__)

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
_FHIR_SYSTEMS = {
    "DCM": DCM_SYSTEM,
    "RFC-3881": "urn:ietf:rfc:3881",
    "nubis-role": "urn:nubis:role",
    "nubis": "urn:nubis:audit",
}
BREAK_GLASS = Code("BTG", "2.16.840.1.113883.5.8", "break the glass")  # HL7 v3 ActReason
# RFC 3881 5.4.1 AuditSourceTypeCode 4: "Application Server process tier in a multi-tier system".
_SOURCE_TYPE = Code("4", "DCM", "Application Server process tier in a multi-tier system")


# --------------------------------------------------------------------------- DICOM XML
def dicom_xml(item: AuditRecord | AuditEvent) -> bytes:
    """The DICOM audit message (PS3.15 A.5.1 ``AuditMessage``) of a record, UTF-8 XML."""
    event = item.event if isinstance(item, AuditRecord) else item
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        EventActionCode=event.action.value,
        EventDateTime=format_time(event.at),
        EventOutcomeIndicator=str(int(event.outcome)),
    )
    _code(ident, "EventID", event.event_id)
    for event_type in event.event_types:
        _code(ident, "EventTypeCode", event_type)
    description = event.outcome_description
    if event.break_glass_reason:
        reason = f"break-glass: {event.break_glass_reason}"
        description = f"{description}; {reason}" if description else reason
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = description
    if event.break_glass_reason:
        _code(ident, "PurposeOfUse", BREAK_GLASS)
    for p in event.participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.requestor else "false"}
        if p.alternative_user_id:
            attrs["AlternativeUserID"] = p.alternative_user_id
        if p.user_name:
            attrs["UserName"] = p.user_name
        if p.network_access_point:
            attrs["NetworkAccessPointID"] = p.network_access_point
            attrs["NetworkAccessPointTypeCode"] = str(p.network_access_point_type)
        active = ET.SubElement(root, "ActiveParticipant", attrs)
        for role in p.roles:
            _code(active, "RoleIDCode", role)
    source = ET.SubElement(
        root, "AuditSourceIdentification", AuditSourceID=event.source_id or "nubis"
    )
    _code(source, "AuditSourceTypeCode", _SOURCE_TYPE)
    extra = _extra_details(event)
    for obj in event.objects:
        element = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID=obj.object_id,
            ParticipantObjectTypeCode=str(int(obj.type_code)),
            ParticipantObjectTypeCodeRole=str(int(obj.role)),
        )
        _code(element, "ParticipantObjectIDTypeCode", obj.id_type)
        if obj.query is not None:
            ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(
                obj.query
            ).decode()
        elif obj.name:
            ET.SubElement(element, "ParticipantObjectName").text = obj.name
        for kind, value in (*obj.details, *extra):
            ET.SubElement(
                element,
                "ParticipantObjectDetail",
                type=kind,
                value=base64.b64encode(value.encode()).decode(),
            )
        if obj.description:
            ET.SubElement(element, "ParticipantObjectDescription").text = obj.description
        for uid, count in obj.sop_classes:
            ET.SubElement(element, "SOPClass", UID=uid, NumberOfInstances=str(count))
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.display},
    )


def _extra_details(event: AuditEvent) -> list[tuple[str, str]]:
    extra = [("FrontDoor", event.front_door)]
    if event.request_id:
        extra.append(("RequestID", event.request_id))
    return extra


# --------------------------------------------------------------------------- FHIR
def fhir_audit_event(item: AuditRecord | AuditEvent) -> dict[str, Any]:
    """The record as a FHIR R4 ``AuditEvent`` resource (JSON-ready dict).

    Required elements are always present: ``type``, ``recorded``, ``agent`` (each with
    ``requestor``), ``source.observer``; an entity carries ``name`` or ``query``, never both
    (constraint sev-1).
    """
    event = item.event if isinstance(item, AuditRecord) else item
    resource: dict[str, Any] = {"resourceType": "AuditEvent"}
    if isinstance(item, AuditRecord):
        resource["id"] = f"audit-{item.seq}"
        resource["meta"] = {"tag": [{"system": "urn:nubis:audit:hash", "code": item.hash}]}
    extensions = [{"url": "urn:nubis:audit:front-door", "valueCode": event.front_door}]
    if event.request_id:
        extensions.append({"url": "urn:nubis:audit:request-id", "valueString": event.request_id})
    resource["extension"] = extensions
    resource["type"] = _coding(event.event_id)
    if event.event_types:
        resource["subtype"] = [_coding(t) for t in event.event_types]
    resource["action"] = event.action.value
    resource["recorded"] = format_time(event.at)
    resource["outcome"] = str(int(event.outcome))
    if event.outcome_description:
        resource["outcomeDesc"] = event.outcome_description
    if event.break_glass_reason:
        resource["purposeOfEvent"] = [
            {"coding": [_coding(BREAK_GLASS)], "text": event.break_glass_reason}
        ]
    resource["agent"] = [_agent(p) for p in event.participants]
    source_id = event.source_id or "nubis"
    resource["source"] = {
        "site": source_id,
        "observer": {"display": source_id},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }
    if event.objects:
        resource["entity"] = [_entity(o) for o in event.objects]
    return resource


def _agent(p: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {"who": {"identifier": {"value": p.user_id}}}
    dicom_roles = [r for r in p.roles if r.system == "DCM"]
    other_roles = [r for r in p.roles if r.system != "DCM"]
    if dicom_roles:
        agent["type"] = {"coding": [_coding(dicom_roles[0])]}
    if other_roles:
        agent["role"] = [{"coding": [_coding(r)], "text": r.display} for r in other_roles]
    if p.alternative_user_id:
        agent["altId"] = p.alternative_user_id
    if p.user_name:
        agent["name"] = p.user_name
    agent["requestor"] = p.requestor
    if p.network_access_point:
        agent["network"] = {
            "address": p.network_access_point,
            "type": str(p.network_access_point_type),
        }
    return agent


def _entity(o: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "what": {"identifier": {"type": {"coding": [_coding(o.id_type)]}, "value": o.object_id}},
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
            "code": str(int(o.type_code)),
        },
        "role": {
            "system": "http://terminology.hl7.org/CodeSystem/object-role",
            "code": str(int(o.role)),
        },
    }
    if o.query is not None:
        entity["query"] = base64.b64encode(o.query).decode()
    elif o.name:
        entity["name"] = o.name
    if o.description:
        entity["description"] = o.description
    details = [{"type": k, "valueString": v} for k, v in o.details]
    details += [{"type": f"SOPClass {uid}", "valueString": str(n)} for uid, n in o.sop_classes]
    if details:
        entity["detail"] = details
    return entity


def _coding(code: Code) -> dict[str, str]:
    coding = {"system": _FHIR_SYSTEMS.get(code.system, f"urn:oid:{code.system}"), "code": code.code}
    if code.display:
        coding["display"] = code.display
    return coding


# --------------------------------------------------------------------------- syslog
# IHE ITI-20 / PS3.15 A.5.2: facility 10 (security/authorization); notice for success,
# warning for failures.
_FACILITY = 10
MSGID = "IHE+RFC-3881"
CHECKPOINT_MSGID = "NUBIS-CHECKPOINT"


def syslog_message(
    payload: bytes, *, at: str, hostname: str, msgid: str, warning: bool = False, app: str = "nubis"
) -> bytes:
    """One RFC 5424 message: header, no structured data, the payload as MSG (UTF-8, BOM)."""
    pri = _FACILITY * 8 + (4 if warning else 5)
    header = f"<{pri}>1 {at} {hostname[:255] or '-'} {app} {os.getpid()} {msgid} - "
    return header.encode() + b"\xef\xbb\xbf" + payload


def frame(message: bytes) -> bytes:
    """RFC 5425 4.3 octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return f"{len(message)} ".encode() + message


@dataclass(frozen=True)
class SyslogTarget:
    """Where to send: ``tls://host:port`` (RFC 5425, default port 6514) or ``tcp://host:port``
    (RFC 6587, closed networks only)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> SyslogTarget:
        parts = urlsplit(url)
        if parts.scheme not in {"tls", "tcp"} or not parts.hostname:
            raise ValueError(f"audit_syslog must be tls://HOST:PORT or tcp://HOST:PORT: {url!r}")
        return cls(parts.scheme, parts.hostname, parts.port or 6514)


class SyslogForwarder:
    """Forward the audit log to a syslog collector from a persistent cursor.

    Parameters
    ----------
    trail
        The audit trail to read (records are read unaudited: see ``AuditTrail.scan``).
    url
        ``tls://host:port`` or ``tcp://host:port``.
    ca_file, cert_file, key_file
        CA bundle that signed the collector's certificate (empty: the system store), and our
        client certificate for collectors that require mutual TLS (IHE ATNA does).
    lock_path
        A lock file: with several worker processes only the one holding it forwards.

    Delivery is at least once: the cursor moves only after a batch was written to the
    connection, and the connection is checked for a close by the collector before each
    batch, so a restarted collector gets everything again from the cursor. A collector that
    vanishes without closing its connections may lose the last batch in the kernel's buffer
    (TCP syslog has no acknowledgements); ``verify`` on the collector side finds such gaps.
    """

    cursor_name = "syslog"
    checkpoint_cursor_name = "syslog-checkpoint"

    def __init__(
        self,
        trail: AuditTrail,
        url: str,
        *,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        lock_path: Path | None = None,
        batch: int = 500,
        timeout: float = 10.0,
    ) -> None:
        self.trail = trail
        self.target = SyslogTarget.parse(url)
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.lock_path = lock_path
        self.batch = batch
        self.timeout = timeout
        self.hostname = socket.gethostname()
        self._sock: socket.socket | None = None
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ connection
    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        return context

    def _connect(self) -> socket.socket:
        if self._sock is not None and not _closed_by_peer(self._sock):
            return self._sock
        self.close_connection()
        raw = socket.create_connection((self.target.host, self.target.port), self.timeout)
        if self.target.scheme == "tls":
            try:
                sock: socket.socket = self._context().wrap_socket(
                    raw, server_hostname=self.target.host
                )
            except BaseException:
                raw.close()
                raise
        else:
            sock = raw
        self._sock = sock
        return sock

    def close_connection(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ forwarding
    def drain(self) -> int:
        """Send everything after the cursor; returns how many records were sent.

        Raises OSError (or ssl.SSLError) if the collector cannot be reached or the connection
        fails; the cursor then still points at the first record not sent.
        """
        sent = 0
        try:
            while True:
                after = self.trail.cursor(self.cursor_name)
                records = self.trail.scan(after, self.batch)
                if not records:
                    break
                payload = b"".join(frame(self._record_message(r)) for r in records)
                self._connect().sendall(payload)
                self.trail.set_cursor(self.cursor_name, records[-1].seq)
                sent += len(records)
            self._send_checkpoints()
        except (OSError, ssl.SSLError):
            self.close_connection()
            raise
        return sent

    def _record_message(self, record: AuditRecord) -> bytes:
        event = record.event
        return syslog_message(
            dicom_xml(event),
            at=format_time(event.at),
            hostname=self.hostname,
            msgid=MSGID,
            warning=int(event.outcome) != 0,
        )

    def _send_checkpoints(self) -> None:
        done = self.trail.cursor(self.checkpoint_cursor_name)
        fresh = [c for c in self.trail.checkpoints() if c.id > done]
        if not fresh:
            return
        payload = b"".join(frame(self._checkpoint_message(c)) for c in fresh)
        self._connect().sendall(payload)
        self.trail.set_cursor(self.checkpoint_cursor_name, fresh[-1].id)

    def _checkpoint_message(self, cp: Checkpoint) -> bytes:
        body = json.dumps(
            {
                "checkpoint": cp.id,
                "seq": cp.seq,
                "head": cp.head_hash,
                "signed_at": cp.signed_at,
                "key_id": cp.key_id,
                "signature": cp.signature,
                "source": self.trail.source_id,
            },
            sort_keys=True,
        ).encode()
        at = format_time(datetime.fromtimestamp(cp.signed_at / 1000, UTC))
        return syslog_message(body, at=at, hostname=self.hostname, msgid=CHECKPOINT_MSGID)

    # ------------------------------------------------------------------ background
    def start(self, interval: float = 2.0, max_backoff: float = 60.0) -> None:
        """Forward in a daemon thread every ``interval`` seconds, backing off while down."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop,
            args=(interval, max_backoff),
            name="nubis-audit-syslog",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self.close_connection()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _holds_lock(self) -> bool:
        if self.lock_path is None:
            return True
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process forwards; try again later in case it stops
        return True

    def _loop(self, interval: float, max_backoff: float) -> None:
        delay = interval
        while not self._stop.wait(delay):
            if not self._holds_lock():
                delay = max(interval, 10.0)
                continue
            try:
                self.drain()
            except Exception as exc:
                # The records stay in the log behind the cursor: nothing is lost, only late.
                delay = min(max(delay * 2, interval), max_backoff)
                log.warning(
                    "audit syslog collector %s:%d unreachable (%s); retrying in %.0f s",
                    self.target.host,
                    self.target.port,
                    exc,
                    delay,
                )
            else:
                delay = interval


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the collector closed (or reset) the connection: it never sends us data.

    A readable socket may only hold TLS records such as TLS 1.3 session tickets, so the probe
    reads without blocking: "want read" means the connection is alive and idle.
    """
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        previous = sock.gettimeout()
        sock.setblocking(False)
        try:
            return sock.recv(1) == b""
        finally:
            sock.settimeout(previous)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return False
    except (OSError, ValueError, ssl.SSLError):
        return True
