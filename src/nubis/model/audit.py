"""Audit events in the fields of the DICOM audit message schema (PS3.15 A.5; RFC 3881).

An :class:`AuditEvent` is what the services hand to the audit trail for every access to patient
data. It mirrors the ``AuditMessage`` element of PS3.15 A.5.1: an event identification (event ID,
type codes, action, date-time, outcome), active participants (who, from where, in which role),
the audit source (this archive) and participant objects (patients, studies, queries). nubis adds
three fields the schema has no place for but an investigation needs: the front door the request
came through, the request ID that ties the record to the server log, and the break-glass reason.

Events serialize to a canonical JSON object (sorted keys, no insignificant whitespace) that the
audit trail hash-chains; :func:`event_from_dict` reads one back for export.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

FRONT_DOORS = frozenset({"dicomweb", "dimse", "cli", "web", "system"})


class EventAction(enum.StrEnum):
    """EventActionCode (PS3.15 A.5.1; RFC 3881 5.1.2)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class EventOutcome(enum.IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1; RFC 3881 5.1.4)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # e.g. refused by authorization, request could not be served
    SERIOUS_FAILURE = 8  # the action was aborted
    MAJOR_FAILURE = 12  # e.g. the archive itself failed


@dataclass(frozen=True)
class Code:
    """A coded value (PS3.15 A.5.1 ``CodedValueType``: csd-code, codeSystemName, displayName)."""

    code: str
    system: str = "DCM"
    display: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "system": self.system, "display": self.display}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Code:
        return cls(data["code"], data.get("system", "DCM"), data.get("display", ""))


class EventID:
    """Audit event IDs of PS3.15 A.5.3 (DCM codes, CID 400)."""

    APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
    AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
    BEGIN_TRANSFERRING = Code("110102", "DCM", "Begin Transferring DICOM Instances")
    INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
    STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
    EXPORT = Code("110106", "DCM", "Export")
    IMPORT = Code("110107", "DCM", "Import")
    NETWORK_ENTRY = Code("110108", "DCM", "Network Entry")
    PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
    PROCEDURE_RECORD = Code("110111", "DCM", "Procedure Record")
    QUERY = Code("110112", "DCM", "Query")
    SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
    USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")


class EventType:
    """Audit event type codes of PS3.15 A.5.3 (DCM codes, CID 401-403)."""

    APPLICATION_START = Code("110120", "DCM", "Application Start")
    APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
    LOGIN = Code("110122", "DCM", "Login")
    LOGOUT = Code("110123", "DCM", "Logout")
    NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
    EMERGENCY_OVERRIDE_STARTED = Code("110127", "DCM", "Emergency Override Started")
    SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
    USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
    AUDIT_RECORDING_STOPPED = Code("110133", "DCM", "Audit Recording Stopped")
    AUDIT_RECORDING_STARTED = Code("110134", "DCM", "Audit Recording Started")
    OBJECT_SECURITY_ATTRIBUTES_CHANGED = Code("110135", "DCM", "Object Security Attributes Changed")
    SECURITY_ROLES_CHANGED = Code("110136", "DCM", "Security Roles Changed")
    USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "DCM", "User security Attributes Changed")
    EMERGENCY_OVERRIDE_STOPPED = Code("110138", "DCM", "Emergency Override Stopped")


class RoleID:
    """Active participant role IDs of PS3.15 A.5.3 (DCM codes, CID 402)."""

    APPLICATION = Code("110150", "DCM", "Application")
    APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
    DESTINATION = Code("110152", "DCM", "Destination Role ID")
    SOURCE = Code("110153", "DCM", "Source Role ID")


class ObjectIDType:
    """ParticipantObjectIDTypeCode values (RFC 3881 5.5.4; PS3.15 A.5.3)."""

    PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
    USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")
    URI = Code("12", "RFC-3881", "URI")
    STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
    SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
    NODE_ID = Code("110182", "DCM", "Node ID")


class ObjectType(enum.IntEnum):
    """ParticipantObjectTypeCode (RFC 3881 5.5.1)."""

    PERSON = 1
    SYSTEM_OBJECT = 2
    ORGANIZATION = 3
    OTHER = 4


class ObjectRole(enum.IntEnum):
    """ParticipantObjectTypeCodeRole (RFC 3881 5.5.2), the values PS3.15 A.5.3 uses."""

    PATIENT = 1
    LOCATION = 2
    REPORT = 3
    RESOURCE = 4
    MASTER_FILE = 5
    USER = 6
    LIST = 7
    DATA_REPOSITORY = 8
    SECURITY_RESOURCE = 13
    QUERY = 24


@dataclass(frozen=True)
class ActiveParticipant:
    """ActiveParticipant (PS3.15 A.5.1; RFC 3881 5.2): a user, process or node taking part.

    ``user_id`` is the authenticated identity (user name, API key id, OIDC subject, or the
    calling AE title for a DIMSE peer); ``alternative_user_id`` carries the AE title(s) as
    ``AETITLES=A;B`` (PS3.15 A.5.2.1) or a process id; ``network_access_point`` is the peer's IP
    address or host name; ``requestor`` marks who asked for the action (UserIsRequestor).
    """

    user_id: str
    requestor: bool = True
    alternative_user_id: str | None = None
    user_name: str | None = None
    roles: tuple[Code, ...] = ()
    network_access_point: str | None = None

    @property
    def network_access_point_type(self) -> int | None:
        """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name (RFC 3881)."""
        if not self.network_access_point:
            return None
        import ipaddress

        try:
            ipaddress.ip_address(self.network_access_point)
        except ValueError:
            return 1
        return 2

    def to_dict(self) -> dict[str, Any]:
        return _compact(
            {
                "user_id": self.user_id,
                "requestor": self.requestor,
                "alternative_user_id": self.alternative_user_id,
                "user_name": self.user_name,
                "roles": [r.to_dict() for r in self.roles],
                "network_access_point": self.network_access_point,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActiveParticipant:
        return cls(
            user_id=data["user_id"],
            requestor=bool(data.get("requestor", False)),
            alternative_user_id=data.get("alternative_user_id"),
            user_name=data.get("user_name"),
            roles=tuple(Code.from_dict(r) for r in data.get("roles", ())),
            network_access_point=data.get("network_access_point"),
        )


@dataclass(frozen=True)
class ParticipantObject:
    """ParticipantObjectIdentification (PS3.15 A.5.1; RFC 3881 5.5): what was acted on.

    ``query`` holds the raw query (a QIDO-RS query string or the encoded C-FIND identifier); the
    schema wants it base64 (``ParticipantObjectQuery``), which is how it is serialized.
    ``details`` are (type, value) pairs (``ParticipantObjectDetail``); ``sop_classes`` are
    (SOP Class UID, number of instances) pairs of a study (PS3.15 A.5.1 ``SOPClass``).
    """

    object_id: str
    type_code: ObjectType
    role: ObjectRole
    id_type: Code
    name: str | None = None
    query: bytes | None = None
    description: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    sop_classes: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _compact(
            {
                "id": self.object_id,
                "type": int(self.type_code),
                "role": int(self.role),
                "id_type": self.id_type.to_dict(),
                "name": self.name,
                "query": base64.b64encode(self.query).decode() if self.query is not None else None,
                "description": self.description,
                "details": [list(d) for d in self.details],
                "sop_classes": [list(s) for s in self.sop_classes],
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParticipantObject:
        query = data.get("query")
        return cls(
            object_id=data["id"],
            type_code=ObjectType(data["type"]),
            role=ObjectRole(data["role"]),
            id_type=Code.from_dict(data["id_type"]),
            name=data.get("name"),
            query=base64.b64decode(query) if query is not None else None,
            description=data.get("description"),
            details=tuple((str(t), str(v)) for t, v in data.get("details", ())),
            sop_classes=tuple((str(u), int(n)) for u, n in data.get("sop_classes", ())),
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AuditEvent:
    """One audit record's content: the DICOM ``AuditMessage`` (PS3.15 A.5.1) plus context.

    Parameters
    ----------
    event_id
        EventID, one of :class:`EventID` (PS3.15 A.5.3).
    action
        EventActionCode: C(reate), R(ead), U(pdate), D(elete), E(xecute).
    participants
        ActiveParticipant elements; at least one, and the requestor first by convention.
    outcome
        EventOutcomeIndicator: 0 success, 4 minor failure (e.g. refused), 8 serious, 12 major.
    objects
        ParticipantObjectIdentification elements: patients, studies, queries, the audit log.
    event_types
        EventTypeCode values (e.g. Login, Emergency Override Started).
    outcome_description
        EventOutcomeDescription: why it failed; never a stack trace.
    at
        EventDateTime (UTC); the time of the event, not of the commit.
    front_door
        ``dicomweb``, ``dimse``, ``cli``, ``web`` or ``system`` (nubis's own field).
    request_id
        The request's ID, as in the server log and the ``X-Request-ID`` response header.
    break_glass_reason
        The reason given for emergency access, when access was by break-glass.
    source_id
        AuditSourceID; filled with the archive's ``audit_source_id`` when empty.
    """

    event_id: Code
    action: EventAction
    participants: tuple[ActiveParticipant, ...]
    outcome: EventOutcome = EventOutcome.SUCCESS
    objects: tuple[ParticipantObject, ...] = ()
    event_types: tuple[Code, ...] = ()
    outcome_description: str | None = None
    at: datetime = field(default_factory=utc_now)
    front_door: str = "system"
    request_id: str | None = None
    break_glass_reason: str | None = None
    source_id: str | None = None

    def __post_init__(self) -> None:
        if not self.participants:
            raise ValueError("an audit event needs at least one active participant")
        if self.front_door not in FRONT_DOORS:
            raise ValueError(f"front_door must be one of {sorted(FRONT_DOORS)}")
        if self.at.tzinfo is None:
            raise ValueError("the event time must be timezone-aware")

    @property
    def requestor(self) -> ActiveParticipant:
        return next((p for p in self.participants if p.requestor), self.participants[0])

    @property
    def patient_ids(self) -> list[str]:
        return [o.object_id for o in self.objects if o.role is ObjectRole.PATIENT]

    def to_dict(self) -> dict[str, Any]:
        """The canonical content: JSON types only, empty and absent fields left out."""
        return _compact(
            {
                "event_id": self.event_id.to_dict(),
                "action": self.action.value,
                "outcome": int(self.outcome),
                "participants": [p.to_dict() for p in self.participants],
                "objects": [o.to_dict() for o in self.objects],
                "event_types": [t.to_dict() for t in self.event_types],
                "outcome_description": self.outcome_description,
                "at": format_time(self.at),
                "front_door": self.front_door,
                "request_id": self.request_id,
                "break_glass_reason": self.break_glass_reason,
                "source_id": self.source_id,
            }
        )


def event_from_dict(data: dict[str, Any]) -> AuditEvent:
    """Rebuild an :class:`AuditEvent` from :meth:`AuditEvent.to_dict` output."""
    return AuditEvent(
        event_id=Code.from_dict(data["event_id"]),
        action=EventAction(data["action"]),
        participants=tuple(ActiveParticipant.from_dict(p) for p in data["participants"]),
        outcome=EventOutcome(data.get("outcome", 0)),
        objects=tuple(ParticipantObject.from_dict(o) for o in data.get("objects", ())),
        event_types=tuple(Code.from_dict(t) for t in data.get("event_types", ())),
        outcome_description=data.get("outcome_description"),
        at=parse_time(data["at"]),
        front_door=data.get("front_door", "system"),
        request_id=data.get("request_id"),
        break_glass_reason=data.get("break_glass_reason"),
        source_id=data.get("source_id"),
    )


def format_time(at: datetime) -> str:
    """xs:dateTime in UTC with milliseconds, as PS3.15 A.5.1 EventDateTime and FHIR instant."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    # Absent and empty fields are left out so the canonical form does not change when an
    # optional field is added to the model later (old records keep verifying).
    return {k: v for k, v in data.items() if v is not None and v != [] and v != ""}
