"""Audit export formats: FHIR AuditEvent R4 structure, DICOM audit message XML, syslog framing,
and the ``nubis audit`` commands."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.model.audit import ActiveParticipant, EventOutcome, event_from_dict
from nubis.security import audit_events
from nubis.security.audit_export import (
    MSGID,
    SyslogTarget,
    dicom_xml,
    fhir_audit_event,
    frame,
    syslog_message,
)

WHO = ActiveParticipant(
    "alice",
    alternative_user_id="AETITLES=WS1",
    user_name="Alice",
    network_access_point="10.1.2.3",
)


def _events() -> list[Any]:
    return [
        audit_events.instances_accessed(
            WHO,
            patient_id="PAT-1",
            study_uids=["1.2.3", "1.2.4"],
            front_door="dicomweb",
            request_id="req-9",
            break_glass_reason="trauma bay 2",
        ),
        audit_events.query(
            WHO, b"\x08\x00\x52\x00", transfer_syntax="1.2.840.10008.1.2.1", front_door="dimse"
        ),
        audit_events.user_authentication(
            "mallory", outcome=EventOutcome.MINOR_FAILURE, front_door="web"
        ),
        audit_events.audit_log_used(WHO, front_door="cli"),
        audit_events.study_deleted(WHO, patient_id="PAT-2", study_uids=["9.9"], front_door="cli"),
    ]


# --------------------------------------------------------------------------- FHIR
_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _coding_ok(c: dict[str, Any]) -> None:
    assert set(c) <= {"system", "code", "display", "version", "userSelected"}
    assert c["system"].startswith(("http", "urn:")) and _CODE.match(c["code"])


def _validate_fhir_audit_event(r: dict[str, Any]) -> None:
    """The R4 AuditEvent structure: required elements, cardinalities, value sets, sev-1."""
    allowed = {
        "resourceType", "id", "meta", "extension", "type", "subtype", "action", "period",
        "recorded", "outcome", "outcomeDesc", "purposeOfEvent", "agent", "source", "entity",
    }  # fmt: skip
    assert set(r) <= allowed, set(r) - allowed
    assert r["resourceType"] == "AuditEvent"
    _coding_ok(r["type"])  # 1..1 Coding
    for c in r.get("subtype", []):
        _coding_ok(c)
    assert r.get("action", "E") in {"C", "R", "U", "D", "E"}
    assert _INSTANT.match(r["recorded"])  # 1..1 instant
    assert r.get("outcome", "0") in {"0", "4", "8", "12"}
    for ext in r.get("extension", []):
        assert ext["url"] and len([k for k in ext if k.startswith("value")]) == 1
    assert r["agent"], "agent is 1..*"
    for agent in r["agent"]:
        assert isinstance(agent["requestor"], bool)  # 1..1
        assert "who" in agent or "name" in agent
        if "network" in agent:
            assert agent["network"]["type"] in {"1", "2", "3", "4", "5"}
        if "type" in agent:
            for c in agent["type"]["coding"]:
                _coding_ok(c)
    assert r["source"]["observer"]  # source 1..1, observer 1..1
    for t in r["source"].get("type", []):
        _coding_ok(t)
    for entity in r.get("entity", []):
        assert not ("name" in entity and "query" in entity)  # sev-1
        if "query" in entity:
            base64.b64decode(entity["query"], validate=True)
        _coding_ok(entity["type"])
        _coding_ok(entity["role"])
        for d in entity.get("detail", []):
            assert d["type"] and len([k for k in d if k.startswith("value")]) == 1


def test_fhir_audit_events_are_valid_r4() -> None:
    for event in _events():
        resource = fhir_audit_event(event)
        _validate_fhir_audit_event(json.loads(json.dumps(resource)))
    accessed = fhir_audit_event(_events()[0])
    assert accessed["type"]["code"] == "110103"
    assert accessed["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    assert accessed["purposeOfEvent"][0]["text"] == "trauma bay 2"
    assert accessed["agent"][0]["network"] == {"address": "10.1.2.3", "type": "2"}
    assert [e["what"]["identifier"]["value"] for e in accessed["entity"]] == [
        "PAT-1",
        "1.2.3",
        "1.2.4",
    ]
    query = fhir_audit_event(_events()[1])
    assert base64.b64decode(query["entity"][0]["query"]) == b"\x08\x00\x52\x00"


# --------------------------------------------------------------------------- DICOM XML
def test_dicom_audit_message_xml() -> None:
    root = ET.fromstring(dicom_xml(_events()[0]))
    assert root.tag == "AuditMessage"
    tags = [child.tag for child in root]
    # Schema order (PS3.15 A.5.1): EventIdentification, ActiveParticipant+, source, objects.
    assert tags[0] == "EventIdentification" and tags[1] == "ActiveParticipant"
    assert tags.index("AuditSourceIdentification") < tags.index("ParticipantObjectIdentification")
    ident = root.find("EventIdentification")
    assert ident is not None
    assert ident.attrib["EventActionCode"] == "R" and ident.attrib["EventOutcomeIndicator"] == "0"
    event_id = ident.find("EventID")
    assert event_id is not None and event_id.attrib["csd-code"] == "110103"
    assert event_id.attrib["codeSystemName"] == "DCM"
    purpose = ident.find("PurposeOfUse")
    assert purpose is not None and purpose.attrib["csd-code"] == "BTG"
    active = root.find("ActiveParticipant")
    assert active is not None and active.attrib["UserIsRequestor"] == "true"
    assert active.attrib["NetworkAccessPointTypeCode"] == "2"
    assert active.attrib["AlternativeUserID"] == "AETITLES=WS1"
    patient, study, _ = root.findall("ParticipantObjectIdentification")
    assert patient.attrib["ParticipantObjectTypeCode"] == "1"
    assert patient.attrib["ParticipantObjectTypeCodeRole"] == "1"
    id_type = study.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.attrib["csd-code"] == "110180"
    details = {
        d.attrib["type"]: base64.b64decode(d.attrib["value"]).decode()
        for d in study.findall("ParticipantObjectDetail")
    }
    assert details == {"FrontDoor": "dicomweb", "RequestID": "req-9"}

    query = ET.fromstring(dicom_xml(_events()[1]))
    obj = query.find("ParticipantObjectIdentification")
    assert obj is not None
    q = obj.find("ParticipantObjectQuery")
    assert q is not None and base64.b64decode(q.text or "") == b"\x08\x00\x52\x00"


def test_event_round_trips_through_canonical_dict() -> None:
    for event in _events():
        again = event_from_dict(json.loads(json.dumps(event.to_dict())))
        assert again.to_dict() == event.to_dict()


# --------------------------------------------------------------------------- syslog framing
def test_syslog_message_and_framing() -> None:
    msg = syslog_message(
        b"<AuditMessage/>", at="2024-01-02T03:04:05.678Z", hostname="h", msgid=MSGID
    )
    assert re.match(
        rb"^<85>1 2024-01-02T03:04:05.678Z h nubis \d+ IHE\+RFC-3881 - \xef\xbb\xbf<", msg
    )
    assert syslog_message(b"x", at="t", hostname="h", msgid="M", warning=True).startswith(b"<84>")
    framed = frame(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(msg)
    assert SyslogTarget.parse("tls://collector.example:6514").port == 6514
    assert SyslogTarget.parse("tcp://c").port == 6514


# --------------------------------------------------------------------------- CLI
def test_cli_verify_list_export_and_tamper(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "d")]
    env = {"NUBIS_DURABLE": "false"}
    result = runner.invoke(app, ["audit", "verify", *data], env=env)
    assert result.exit_code == 0, result.output
    assert "intact" in result.output
    result = runner.invoke(app, ["audit", "list", "--json", *data], env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["event_id"]["code"] for r in lines] == ["110101", "110101"]  # verify, then list

    out = tmp_path / "audit.ndjson"
    result = runner.invoke(app, ["audit", "export", "--format", "fhir", "--out", str(out), *data])
    assert result.exit_code == 0, result.output
    for line in out.read_text().splitlines():
        _validate_fhir_audit_event(json.loads(line))

    pub = tmp_path / "kept.pub"
    result = runner.invoke(app, ["audit", "key", *data])
    pub.write_text(result.output)
    con = sqlite3.connect(tmp_path / "d" / "index.sqlite")
    con.execute("DROP TRIGGER audit_log_no_delete")
    con.execute("DELETE FROM audit_log WHERE seq = 2")
    con.commit()
    con.close()
    result = runner.invoke(app, ["audit", "verify", "--public-key", str(pub), *data], env=env)
    assert result.exit_code == 1
    assert "first bad record 2" in " ".join(result.output.split())
