"""Builders of the audit events the services record, one per PS3.15 A.5.3 message type.

The services layer calls these and hands the result to ``archive.audit.record``::

    from nubis.security import audit_events

    event = audit_events.instances_accessed(
        principal, patient_id="PAT-1", study_uids=[study_uid],
        outcome=EventOutcome.SUCCESS, request_id=request_id,
    )
    archive.audit.record(event)   # raises AuditUnavailable: refuse the access (fail closed)

``who`` is duck-typed so the services need not convert their principal: it may be an
:class:`ActiveParticipant`, a plain user id string, or any object with some of the attributes
``id``/``user_id``/``subject``/``name`` (identity), ``roles`` (strings or enums),
``peer``/``address``/``host``/``remote_addr`` (a host or IP, or a (host, port) pair),
``ae_title``/``calling_ae`` (DIMSE) and ``via``/``front_door`` (``dicomweb``, ``dimse``,
``cli``, ``web``). ``front_door`` given to a builder wins over the principal's.

Outcomes (EventOutcomeIndicator, RFC 3881 5.1.4): 0 success; 4 minor failure, used for an
access refused by authorization or for a resource that was not found; 8 serious failure
(aborted mid-way, e.g. a retrieval stream cut short); 12 major failure (the archive failed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nubis.model.audit import (
    ActiveParticipant,
    AuditEvent,
    Code,
    EventAction,
    EventID,
    EventOutcome,
    EventType,
    ObjectIDType,
    ObjectRole,
    ObjectType,
    ParticipantObject,
    RoleID,
)

# Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2): the SOP Class that a
# QIDO-RS study query corresponds to, named in Query audit messages (PS3.15 A.5.3.10).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def participant(who: Any, *, requestor: bool = True) -> ActiveParticipant:
    """An ActiveParticipant (PS3.15 A.5.1) from a principal-like object; see module docs."""
    if isinstance(who, ActiveParticipant):
        return who
    if isinstance(who, str):
        return ActiveParticipant(user_id=who, requestor=requestor)
    user_id = _first(who, "user_id", "id", "subject", "name") or "unknown"
    roles = tuple(
        Code(_text(r), "nubis-role", _text(r)) for r in (getattr(who, "roles", None) or ())
    )
    peer = _first(who, "network_access_point", "peer", "address", "host", "remote_addr")
    if isinstance(peer, tuple | list) and peer:
        peer = peer[0]
    ae = _first(who, "ae_title", "calling_ae")
    return ActiveParticipant(
        user_id=str(user_id),
        requestor=requestor,
        alternative_user_id=f"AETITLES={str(ae).strip()}" if ae else None,
        user_name=_first(who, "user_name", "display_name"),
        roles=roles,
        network_access_point=str(peer) if peer else None,
    )


def patient_object(patient_id: str, name: str | None = None) -> ParticipantObject:
    """The patient participant object (PS3.15 A.5.2.3: type 1, role 1, Patient Number)."""
    return ParticipantObject(
        patient_id, ObjectType.PERSON, ObjectRole.PATIENT, ObjectIDType.PATIENT_NUMBER, name=name
    )


def study_object(study_uid: str, sop_classes: Iterable[tuple[str, int]] = ()) -> ParticipantObject:
    """A study participant object (PS3.15 A.5.2.3: type 2, role 3, Study Instance UID)."""
    return ParticipantObject(
        study_uid,
        ObjectType.SYSTEM_OBJECT,
        ObjectRole.REPORT,
        ObjectIDType.STUDY_INSTANCE_UID,
        sop_classes=tuple(sop_classes),
    )


def instances_accessed(
    who: Any,
    *,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    outcome: EventOutcome = EventOutcome.SUCCESS,
    action: EventAction = EventAction.READ,
    front_door: str | None = None,
    request_id: str | None = None,
    break_glass_reason: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """DICOM Instances Accessed (PS3.15 A.5.3.3): metadata read, rendered, viewed or updated.

    Use ``action=UPDATE`` for changes and ``action=CREATE`` when instances are created here.
    """
    return _event(
        EventID.INSTANCES_ACCESSED,
        action,
        who,
        patient_id,
        study_uids,
        outcome,
        front_door,
        request_id,
        break_glass_reason,
        description,
    )


def patient_record(
    who: Any,
    *,
    patient_id: str,
    study_uids: Iterable[str] = (),
    action: EventAction = EventAction.UPDATE,
    outcome: EventOutcome = EventOutcome.SUCCESS,
    front_door: str | None = None,
    request_id: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """Patient Record (PS3.15 A.5.3.9): a patient's record was created, read, updated or
    deleted; a correction of patient attributes is ``action=UPDATE`` (EventActionCode U)."""
    return _event(
        EventID.PATIENT_RECORD,
        action,
        who,
        patient_id,
        study_uids,
        outcome,
        front_door,
        request_id,
        None,
        description,
    )


def procedure_record(
    who: Any,
    *,
    action: EventAction,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    outcome: EventOutcome = EventOutcome.SUCCESS,
    request_id: str | None = None,
    break_glass_reason: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """Procedure Record (PS3.15 A.5.3, EventID 110111): a procedure step (a UPS workitem)
    was created, read, updated (its state changed) or deleted. ``description`` names the
    workitem by UID and what happened; the patient goes in the patient participant object."""
    return _event(
        EventID.PROCEDURE_RECORD,
        action,
        who,
        patient_id,
        study_uids,
        outcome,
        None,
        request_id,
        break_glass_reason,
        description,
    )


def begin_transferring(
    who: Any,
    *,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    front_door: str | None = None,
    request_id: str | None = None,
    break_glass_reason: str | None = None,
) -> AuditEvent:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.2): record before the first byte."""
    return _event(
        EventID.BEGIN_TRANSFERRING,
        EventAction.EXECUTE,
        who,
        patient_id,
        study_uids,
        EventOutcome.SUCCESS,
        front_door,
        request_id,
        break_glass_reason,
        None,
    )


def instances_transferred(
    who: Any,
    *,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    outcome: EventOutcome = EventOutcome.SUCCESS,
    stored: bool = False,
    front_door: str | None = None,
    request_id: str | None = None,
    break_glass_reason: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """DICOM Instances Transferred (PS3.15 A.5.3.4): a retrieval ended, or a store landed.

    ``stored=True`` (STOW-RS, C-STORE, import) records action C(reate); otherwise R(ead) for a
    retrieval (WADO-RS, WADO-URI, C-GET, C-MOVE). Give ``outcome=SERIOUS_FAILURE`` when a stream
    was cut short.
    """
    action = EventAction.CREATE if stored else EventAction.READ
    return _event(
        EventID.INSTANCES_TRANSFERRED,
        action,
        who,
        patient_id,
        study_uids,
        outcome,
        front_door,
        request_id,
        break_glass_reason,
        description,
    )


def study_deleted(
    who: Any,
    *,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    outcome: EventOutcome = EventOutcome.SUCCESS,
    front_door: str | None = None,
    request_id: str | None = None,
    break_glass_reason: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """DICOM Study Deleted (PS3.15 A.5.3.5); also for series or instance deletes."""
    return _event(
        EventID.STUDY_DELETED,
        EventAction.DELETE,
        who,
        patient_id,
        study_uids,
        outcome,
        front_door,
        request_id,
        break_glass_reason,
        description,
    )


def query(
    who: Any,
    query_text: str | bytes,
    *,
    sop_class_uid: str = STUDY_ROOT_FIND,
    patient_id: str | None = None,
    outcome: EventOutcome = EventOutcome.SUCCESS,
    transfer_syntax: str | None = None,
    front_door: str | None = None,
    request_id: str | None = None,
    break_glass_reason: str | None = None,
) -> AuditEvent:
    """Query (PS3.15 A.5.3.10): a QIDO-RS query string or an encoded C-FIND identifier.

    The query goes in ParticipantObjectQuery, base64-encoded as the schema wants;
    ``transfer_syntax`` is the C-FIND identifier's transfer syntax (ParticipantObjectDetail).
    """
    raw = query_text.encode() if isinstance(query_text, str) else query_text
    details = (("TransferSyntax", transfer_syntax),) if transfer_syntax else ()
    objects: list[ParticipantObject] = [
        ParticipantObject(
            sop_class_uid,
            ObjectType.SYSTEM_OBJECT,
            ObjectRole.REPORT,
            ObjectIDType.SOP_CLASS_UID,
            query=raw,
            details=details,
        )
    ]
    if patient_id:
        objects.insert(0, patient_object(patient_id))
    return AuditEvent(
        EventID.QUERY,
        EventAction.EXECUTE,
        (participant(who),),
        outcome=outcome,
        objects=tuple(objects),
        front_door=_door(who, front_door),
        request_id=request_id,
        break_glass_reason=break_glass_reason,
    )


def user_authentication(
    who: Any,
    *,
    outcome: EventOutcome = EventOutcome.SUCCESS,
    logout: bool = False,
    front_door: str | None = None,
    request_id: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """User Authentication (PS3.15 A.5.3.11): login or logout, failed attempts included."""
    return AuditEvent(
        EventID.USER_AUTHENTICATION,
        EventAction.EXECUTE,
        (participant(who),),
        outcome=outcome,
        event_types=(EventType.LOGOUT if logout else EventType.LOGIN,),
        outcome_description=description,
        front_door=_door(who, front_door),
        request_id=request_id,
    )


def share_opened(
    who: Any,
    *,
    created_by: str,
    study_uid: str,
    outcome: EventOutcome = EventOutcome.SUCCESS,
    description: str | None = None,
    front_door: str | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """A share link opened (User Authentication, Login; PS3.15 A.5.3.11), or refused (a wrong
    PIN: minor failure). ``who`` is the link's principal (``share:<id>``, with the address it
    came from); the user who made the link is a second participant, not the requestor, and the
    study is named, so one record answers who, from where, which study."""
    return AuditEvent(
        EventID.USER_AUTHENTICATION,
        EventAction.EXECUTE,
        (participant(who), participant(created_by, requestor=False)),
        outcome=outcome,
        objects=(study_object(study_uid),),
        event_types=(EventType.LOGIN,),
        outcome_description=description,
        front_door=_door(who, front_door),
        request_id=request_id,
    )


def security_alert(
    who: Any,
    event_type: Code,
    *,
    outcome: EventOutcome = EventOutcome.MINOR_FAILURE,
    description: str | None = None,
    front_door: str | None = None,
    request_id: str | None = None,
    break_glass_reason: str | None = None,
    objects: Iterable[ParticipantObject] = (),
) -> AuditEvent:
    """Security Alert (PS3.15 A.5.3.11): refused authorization, break-glass, tampering found."""
    return AuditEvent(
        EventID.SECURITY_ALERT,
        EventAction.EXECUTE,
        (participant(who),),
        outcome=outcome,
        objects=tuple(objects),
        event_types=(event_type,),
        outcome_description=description,
        front_door=_door(who, front_door),
        request_id=request_id,
        break_glass_reason=break_glass_reason,
    )


def access_refused(
    who: Any, what: str, *, front_door: str | None = None, request_id: str | None = None
) -> AuditEvent:
    """A request refused by authorization: Security Alert, Use of Restricted Function.

    ``what`` says what was attempted (e.g. ``"DELETE study 1.2.3"``); it is for the auditor.
    The data-access event itself (with ``outcome=MINOR_FAILURE``) may be recorded as well.
    """
    return security_alert(
        who,
        EventType.USE_OF_RESTRICTED_FUNCTION,
        description=what,
        front_door=front_door,
        request_id=request_id,
    )


def login_lockout(
    who: Any,
    *,
    user_locked: bool,
    description: str,
    front_door: str | None = None,
) -> AuditEvent:
    """Password logins locked after failed attempts (nubis.security.throttle): Security Alert,
    User Security Attributes Changed for a user name, Node Authentication for a source address.
    ``who`` names the user name tried last and the address it came from."""
    kind = EventType.USER_SECURITY_ATTRIBUTES_CHANGED if user_locked else None
    return security_alert(
        who,
        kind or EventType.NODE_AUTHENTICATION,
        description=description,
        front_door=front_door,
    )


def security_resource(object_id: str, name: str) -> ParticipantObject:
    """The Alert Subject of a Security Alert (PS3.15 A.5.3.11): a system object named by URI,
    e.g. ``nubis:user/alice`` or ``nubis:dimse-peer/CT1``."""
    return ParticipantObject(
        object_id,
        ObjectType.SYSTEM_OBJECT,
        ObjectRole.SECURITY_RESOURCE,
        ObjectIDType.URI,
        name=name,
    )


def account_changed(
    who: Any,
    user: str,
    *,
    roles: bool,
    description: str,
    front_door: str | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """A user account changed (Security Alert, PS3.15 A.5.3.11), whoever changed it: Security
    Roles Changed (110136) when what the user may do changed (added, removed, new roles,
    ``roles=True``), User Security Attributes Changed (110137) when its credentials did (a
    password set, an API key created or revoked). The user is the Alert Subject."""
    return security_alert(
        who,
        EventType.SECURITY_ROLES_CHANGED if roles else EventType.USER_SECURITY_ATTRIBUTES_CHANGED,
        outcome=EventOutcome.SUCCESS,
        description=description,
        front_door=front_door,
        request_id=request_id,
        objects=(security_resource(f"nubis:user/{user}", user),),
    )


def security_configuration_changed(
    who: Any,
    object_id: str,
    name: str,
    *,
    description: str,
    front_door: str | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """Who may reach the archive changed (Security Alert, Security Configuration 110129,
    PS3.15 A.5.3.11): e.g. a DIMSE peer added or removed; the entry is the Alert Subject."""
    return security_alert(
        who,
        EventType.SECURITY_CONFIGURATION,
        outcome=EventOutcome.SUCCESS,
        description=description,
        front_door=front_door,
        request_id=request_id,
        objects=(security_resource(object_id, name),),
    )


def break_glass(
    who: Any,
    reason: str,
    *,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    front_door: str | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """Emergency access started (Security Alert, Emergency Override Started), with its reason.

    Record this, then the access events with ``break_glass_reason=reason``.
    """
    return security_alert(
        who,
        EventType.EMERGENCY_OVERRIDE_STARTED,
        outcome=EventOutcome.SUCCESS,
        description=reason,
        front_door=front_door,
        request_id=request_id,
        break_glass_reason=reason,
        objects=_objects(patient_id, study_uids),
    )


def audit_log_used(
    who: Any,
    *,
    what: str = "audit log",
    front_door: str | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """Audit Log Used (PS3.15 A.5.3.1): someone read, listed, exported or verified the log."""
    log_object = ParticipantObject(
        "nubis:audit-log",
        ObjectType.SYSTEM_OBJECT,
        ObjectRole.SECURITY_RESOURCE,
        ObjectIDType.URI,
        name="Security Audit Log",
        description=what,
    )
    return AuditEvent(
        EventID.AUDIT_LOG_USED,
        EventAction.READ,
        (participant(who),),
        objects=(log_object,),
        front_door=_door(who, front_door),
        request_id=request_id,
    )


def data_export(
    who: Any,
    *,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    outcome: EventOutcome = EventOutcome.SUCCESS,
    front_door: str | None = None,
    request_id: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """Export (PS3.15 A.5.3.6): data leaves the archive's control (media, another system)."""
    return _event(
        EventID.EXPORT,
        EventAction.READ,
        who,
        patient_id,
        study_uids,
        outcome,
        front_door,
        request_id,
        None,
        description,
    )


def data_import(
    who: Any,
    *,
    patient_id: str | None = None,
    study_uids: Iterable[str] = (),
    outcome: EventOutcome = EventOutcome.SUCCESS,
    front_door: str | None = None,
    request_id: str | None = None,
    description: str | None = None,
) -> AuditEvent:
    """Import (PS3.15 A.5.3.7): data brought in from media or files (``nubis import``)."""
    return _event(
        EventID.IMPORT,
        EventAction.CREATE,
        who,
        patient_id,
        study_uids,
        outcome,
        front_door,
        request_id,
        None,
        description,
    )


def application_activity(who: Any, *, started: bool, front_door: str = "system") -> AuditEvent:
    """Application Activity (PS3.15 A.5.3.1): the archive started or stopped."""
    return AuditEvent(
        EventID.APPLICATION_ACTIVITY,
        EventAction.EXECUTE,
        (participant(who),),
        event_types=(EventType.APPLICATION_START if started else EventType.APPLICATION_STOP,),
        front_door=front_door,
    )


def _event(
    event_id: Code,
    action: EventAction,
    who: Any,
    patient_id: str | None,
    study_uids: Iterable[str],
    outcome: EventOutcome,
    front_door: str | None,
    request_id: str | None,
    break_glass_reason: str | None,
    description: str | None,
) -> AuditEvent:
    return AuditEvent(
        event_id,
        action,
        (participant(who),),
        outcome=outcome,
        objects=_objects(patient_id, study_uids),
        outcome_description=description,
        front_door=_door(who, front_door),
        request_id=request_id,
        break_glass_reason=break_glass_reason,
    )


def _objects(patient_id: str | None, study_uids: Iterable[str]) -> tuple[ParticipantObject, ...]:
    objects = [patient_object(patient_id)] if patient_id else []
    objects.extend(study_object(uid) for uid in study_uids)
    return tuple(objects)


def _door(who: Any, front_door: str | None) -> str:
    if front_door:
        return front_door
    via = _first(who, "front_door", "via")
    return str(getattr(via, "value", via)) if via else "system"


def _first(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value:
            return value
    return None


def _text(value: Any) -> str:
    return str(getattr(value, "name", None) or getattr(value, "value", None) or value).lower()


__all__ = [
    "STUDY_ROOT_FIND",
    "RoleID",
    "access_refused",
    "account_changed",
    "application_activity",
    "audit_log_used",
    "begin_transferring",
    "break_glass",
    "data_export",
    "data_import",
    "instances_accessed",
    "instances_transferred",
    "login_lockout",
    "participant",
    "patient_object",
    "query",
    "security_alert",
    "security_configuration_changed",
    "security_resource",
    "share_opened",
    "study_deleted",
    "study_object",
    "user_authentication",
]
