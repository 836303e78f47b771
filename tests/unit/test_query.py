"""QIDO-RS query parsing (PS3.18 8.3.4, 10.6.1.2) and its SQL execution (PS3.4 C.2.2.2)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from nubis.errors import BadRequest
from nubis.index import schema
from nubis.index.query_sql import _like_pattern, _plan, search, search_page
from nubis.model.query import (
    DEFAULT_RETURN_TAGS,
    MATCHING_KEYS,
    Level,
    MatchKind,
    Order,
    fold_person_name,
    parse_qido,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"

# --- fixture ------------------------------------------------------------------------------------

_ids = itertools.count(1)


def add_study(conn: sa.Connection, uid: str, partition: str = "default", **cols: Any) -> int:
    pk = next(_ids)
    for raw, folded in (
        ("patient_name", "patient_name_folded"),
        ("referring_physician_name", "referring_physician_name_folded"),
    ):
        if cols.get(raw) is not None:
            cols.setdefault(folded, fold_person_name(cols[raw]))
    attrs = cols.pop("attrs", {})
    conn.execute(
        schema.studies.insert().values(
            id=pk,
            partition=partition,
            study_uid=uid,
            attrs=json.dumps(attrs),
            created_at=0,
            updated_at=0,
            **cols,
        )
    )
    return pk


def add_series(
    conn: sa.Connection,
    study_pk: int,
    uid: str,
    requests: tuple[tuple[str | None, str | None], ...] = (),
    **cols: Any,
) -> int:
    pk = next(_ids)
    attrs = cols.pop("attrs", {})
    conn.execute(
        schema.series.insert().values(
            id=pk, study_pk=study_pk, series_uid=uid, attrs=json.dumps(attrs), created_at=0, **cols
        )
    )
    for sps, rp in requests:
        conn.execute(
            schema.series_requests.insert().values(
                series_pk=pk, scheduled_procedure_step_id=sps, requested_procedure_id=rp
            )
        )
    return pk


def add_instance(
    conn: sa.Connection,
    series_pk: int,
    uid: str,
    partition: str = "default",
    metadata: dict[str, Any] | None = None,
    **cols: Any,
) -> int:
    pk = next(_ids)
    conn.execute(
        schema.instances.insert().values(
            id=pk,
            series_pk=series_pk,
            partition=partition,
            sop_instance_uid=uid,
            sop_class_uid=cols.pop("sop_class_uid", CT),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            blob_key=f"blob-{pk}",
            size=1,
            sha256="0" * 64,
            metadata_json=json.dumps(metadata or {}),
            created_at=0,
            **cols,
        )
    )
    return pk


def _engine(request: pytest.FixtureRequest, name: str) -> sa.Engine:
    """An empty database of the backend under test: the same matching on every index backend."""
    if request.param == "sqlite":
        return sa.create_engine("sqlite://")
    url = request.getfixturevalue("postgres").database(name)
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="module", params=_BACKENDS)
def conn(request: pytest.FixtureRequest) -> Iterator[sa.Connection]:
    engine = _engine(request, "qido_matching")
    with engine.connect() as c:
        schema.metadata.create_all(c)
        s1 = add_study(
            c,
            "1.2.1",
            patient_id="P1",
            patient_name="Doe^John",
            patient_birth_date="19700101",
            patient_sex="M",
            study_date="20200115",
            study_time="103000",
            accession_number="ACC1",
            referring_physician_name="House^Gregory",
            study_id="S1",
            study_description="Head 50%_off",
            timezone_offset="+0100",
            modalities="CT\\MR",
            num_series=2,
            num_instances=4,
            attrs={
                "00081030": {"vr": "LO", "Value": ["Head 50%_off"]},
                "00100021": {"vr": "LO", "Value": ["HOSP"]},
                "00091010": {"vr": "LO", "Value": ["private"]},
            },
        )
        s2 = add_study(
            c,
            "1.2.2",
            patient_id="P2",
            patient_name="Smith-Jones^Anna",
            study_date="20200201",
            study_time="0800",
            accession_number="ACC_2",
            study_description="Head 50xyoff",
            modalities="CT",
            num_series=1,
            num_instances=1,
        )
        s3 = add_study(
            c,
            "1.2.3",
            patient_id="P1",
            patient_name="doe^jane=ドウ^ジェーン",
            study_date="20191231",
            study_time="235959",
            accession_number="ACC%3",
            modalities="US",
            num_series=1,
            num_instances=0,
        )
        add_study(c, "1.2.4", patient_id="p1", patient_name="DOE^JOHN", study_date="")
        add_study(c, "1.2.5", patient_id="P[1]", patient_name="O'Brien^Pat")
        # Same UIDs in another partition: never visible from "default".
        o1 = add_study(c, "1.2.1", partition="other", patient_id="P1", modalities="CT")
        o1s = add_series(c, o1, "1.2.1.1", modality="CT")
        add_instance(c, o1s, "1.2.1.1.1", partition="other")

        se11 = add_series(
            c,
            s1,
            "1.2.1.1",
            requests=(("SPS1", "RP1"), ("SPS2", None)),
            modality="CT",
            series_number=1,
            series_description="axial",
            performed_date="20200115",
            performed_time="1031",
            num_instances=3,
        )
        se12 = add_series(c, s1, "1.2.1.2", modality="MR", series_number=2, num_instances=1)
        add_series(c, s2, "1.2.2.1", modality="CT", series_number=10, num_instances=1)
        add_series(c, s3, "1.2.3.1", modality="US", series_number=2)

        meta = {
            "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]},
            "00081030": {"vr": "LO", "Value": ["Head 50%_off"]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "bulk/7FE00010"},
            "00089121": {
                "vr": "SQ",
                "Value": [
                    {
                        "00280002": {"vr": "US", "Value": [1]},
                        "00091001": {"vr": "OB", "BulkDataURI": "x"},
                    }
                ],
            },
        }
        add_instance(
            c,
            se11,
            "1.2.1.1.1",
            instance_number=1,
            rows=512,
            columns=512,
            bits_allocated=16,
            metadata=meta,
        )
        add_instance(c, se11, "1.2.1.1.2", instance_number=2)
        add_instance(c, se11, "1.2.1.1.3", instance_number=10)
        add_instance(c, se12, "1.2.1.2.1", instance_number=1, sop_class_uid=MR)
        c.commit()
        yield c


def q(level: Level, params: list[tuple[str, str]] | dict[str, str], **kw: Any):
    items = list(params.items()) if isinstance(params, dict) else params
    return parse_qido(level, items, max_limit=kw.pop("max_limit", 100), **kw)


def run(conn: sa.Connection, level: Level, params: Any, **kw: Any) -> list[dict[str, Any]]:
    return search(conn, q(level, params, **kw))


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r.get(tag, {}).get("Value", [None])[0] for r in results]


STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"

# --- parse_qido ---------------------------------------------------------------------------------


def test_keyword_tag_and_nested_keys_parse_alike() -> None:
    a = q(Level.SERIES, {"RequestAttributesSequence.ScheduledProcedureStepID": "X"})
    b = q(Level.SERIES, {"00400275.00400009": "X"})
    c = q(Level.SERIES, {"RequestAttributesSequence.00400009": "X"})
    assert a.matches == b.matches == c.matches
    assert a.matches[0].path == (0x00400275, 0x00400009)
    assert q(Level.STUDY, {"00100020": "x"}).matches == q(Level.STUDY, {"PatientID": "x"}).matches


@pytest.mark.parametrize(
    ("level", "key"),
    [
        (Level.STUDY, "NoSuchKeyword"),
        (Level.STUDY, "patientid"),  # keywords are case-sensitive
        (Level.STUDY, "0010002"),
        (Level.STUDY, "0010002G"),
        (Level.STUDY, "PatientID.PatientName"),  # not a sequence
        (Level.STUDY, "'; DROP TABLE studies; --"),
        (Level.STUDY, "x" * 10_000),
        (Level.STUDY, ""),
    ],
)
def test_unknown_keys_are_rejected(level: Level, key: str) -> None:
    with pytest.raises(BadRequest) as err:
        q(level, [(key, "1")])
    assert "not a DICOM attribute" in err.value.reason or "not a sequence" in err.value.reason


@pytest.mark.parametrize(
    ("level", "key"),
    [
        (Level.STUDY, "Modality"),  # series key at study level
        (Level.SERIES, "SOPInstanceUID"),  # instance key at series level
        (Level.STUDY, "Rows"),  # a DICOM attribute, not a matching key
        (Level.SERIES, "ReferencedRequestSequence.ScheduledProcedureStepID"),
        (Level.INSTANCE, "RequestAttributesSequence"),  # the sequence itself
    ],
)
def test_unsupported_matching_keys_are_rejected(level: Level, key: str) -> None:
    with pytest.raises(BadRequest) as err:
        q(level, [(key, "1")])
    assert "not a supported matching key" in err.value.reason
    assert key.split(".")[0] in err.value.reason


def test_upper_level_keys_are_allowed_below() -> None:
    inst = q(Level.INSTANCE, {"PatientID": "x", "Modality": "CT", "SOPClassUID": CT})
    assert len(inst.matches) == 3


@pytest.mark.parametrize(
    "params",
    [
        [("PatientID", "a"), ("PatientID", "b")],
        [("PatientID", "a"), ("00100020", "a")],
        [("limit", "1"), ("limit", "2")],
        [("offset", "1"), ("offset", "1")],
        [("fuzzymatching", "true"), ("fuzzymatching", "true")],
    ],
)
def test_repeated_parameters_are_rejected(params: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest, match="more than once"):
        q(Level.STUDY, params)


def test_includefield_forms() -> None:
    query = q(
        Level.STUDY,
        [("includefield", "StudyDescription,00100021"), ("includefield", " 00091010 ,")],
    )
    assert {0x00081030, 0x00100021, 0x00091010} <= query.include
    assert DEFAULT_RETURN_TAGS[Level.STUDY] <= query.include
    assert q(Level.STUDY, [("includefield", "PatientID,all")]).include == "all"
    assert q(Level.STUDY, [("includefield", "ALL")]).include == "all"
    nested = q(Level.SERIES, [("includefield", "RequestAttributesSequence.RequestedProcedureID")])
    assert 0x00400275 in nested.include
    with pytest.raises(BadRequest, match="includefield"):
        q(Level.STUDY, [("includefield", "NotAKeyword")])


@pytest.mark.parametrize(
    "params",
    [
        [("includefield", "PatientName")] * 101,  # repetition, issue #9
        [("includefield", ",".join(f"0009{n:04X}" for n in range(101)))],  # distinct private tags
        [("includefield", ",".join(["StudyDescription"] * 60))] * 2,
    ],
)
def test_includefield_is_bounded(params: list[tuple[str, str]]) -> None:
    """Each includefield attribute is an element in every result: at most 100 per request."""
    with pytest.raises(BadRequest, match="includefield: more than 100 attributes"):
        q(Level.STUDY, params)
    assert 0x00100010 in q(Level.STUDY, [("includefield", "PatientName")] * 100).include


def test_parent_defaults_follow_the_scope() -> None:
    unscoped = q(Level.SERIES, {})
    scoped = q(Level.SERIES, {}, study_uid="1.2.1")
    assert isinstance(unscoped.include, frozenset) and isinstance(scoped.include, frozenset)
    assert 0x00100020 in unscoped.include  # PatientID: a study default
    assert 0x00100020 not in scoped.include
    assert 0x0020000D in scoped.include  # the parent UID is always there
    inst = q(Level.INSTANCE, {}, study_uid="1.2.1", series_uid="1.2.1.1")
    assert isinstance(inst.include, frozenset)
    assert {0x0020000D, 0x0020000E} <= inst.include
    assert 0x00080060 not in inst.include


def test_limit_and_offset() -> None:
    assert q(Level.STUDY, {"limit": "5", "offset": "7"}).limit == 5
    assert q(Level.STUDY, {"offset": "7"}).offset == 7
    default = q(Level.STUDY, {}, default_limit=10)
    assert (default.limit, default.limit_capped, default.warnings) == (10, True, ())
    clamped = q(Level.STUDY, {"limit": "5000"}, max_limit=100)
    assert clamped.limit == 100 and clamped.limit_capped
    assert clamped.warnings and "100" in clamped.warnings[0]
    assert not q(Level.STUDY, {"limit": "100"}).limit_capped
    assert q(Level.STUDY, {"limit": "0"}).limit == 0


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "-1"},
        {"limit": "1.5"},
        {"limit": "ten"},
        {"limit": ""},
        {"limit": "١٠"},  # non-ASCII digits
        {"limit": "9" * 5000},
        {"offset": "-1"},
        {"offset": "1e3"},
        {"offset": str(2**63)},
        {"fuzzymatching": "yes"},
    ],
)
def test_bad_control_parameters(params: dict[str, str]) -> None:
    with pytest.raises(BadRequest) as err:
        q(Level.STUDY, params)
    assert next(iter(params)) in err.value.reason


def test_accept_and_charset_are_left_to_http() -> None:
    assert q(Level.STUDY, {"accept": "application/dicom+json", "charset": "utf-8"}).matches == ()


def test_fuzzymatching_flag() -> None:
    assert q(Level.STUDY, {"fuzzymatching": "true"}).fuzzy
    assert not q(Level.STUDY, {"fuzzymatching": "False"}).fuzzy


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("PatientID", "", MatchKind.UNIVERSAL),
        ("PatientID", "*", MatchKind.UNIVERSAL),
        ("StudyInstanceUID", "*", MatchKind.UNIVERSAL),
        ("PatientID", "P1", MatchKind.SINGLE),
        ("PatientID", "P*1?", MatchKind.WILDCARD),
        ("StudyInstanceUID", "1.2.3", MatchKind.SINGLE),
        ("StudyInstanceUID", "1.2.3,1.2.4", MatchKind.LIST),
        ("StudyInstanceUID", "1.2.3\\1.2.4", MatchKind.LIST),
        ("ModalitiesInStudy", "CT\\MR", MatchKind.LIST),
        ("ModalitiesInStudy", "CT,MR", MatchKind.LIST),
        ("StudyDate", "20200101", MatchKind.SINGLE),
        ("StudyDate", "20200101-20200131", MatchKind.RANGE),
        ("StudyDate", "-20200131", MatchKind.RANGE),
        ("StudyDate", "20200101-", MatchKind.RANGE),
        ("StudyTime", "1030", MatchKind.RANGE),
        ("StudyTime", "1030-1100", MatchKind.RANGE),
    ],
)
def test_match_kinds(key: str, value: str, kind: MatchKind) -> None:
    assert q(Level.STUDY, {key: value}).matches[0].kind is kind


def test_time_bounds_cover_their_precision() -> None:
    m = q(Level.STUDY, {"StudyTime": "10-1130"}).matches[0]
    assert (m.low, m.high) == ("10", "113059.999999")
    single = q(Level.STUDY, {"StudyTime": "103015.5"}).matches[0]
    assert (single.low, single.high) == ("103015.5", "103015.599999")


def test_integers_and_wildcard_collapsing() -> None:
    assert q(Level.SERIES, {"SeriesNumber": " +10 "}).matches[0].values == (10,)
    assert q(Level.STUDY, {"PatientID": "a***b"}).matches[0].values == ("a*b",)
    # Leading and trailing spaces are padding (PS3.4 C.2.2.2.1).
    assert q(Level.STUDY, {"PatientID": " P1 "}).matches[0].values == ("P1",)


def test_dotted_dates_are_read() -> None:
    """YYYY.MM.DD, the ACR-NEMA form PS3.5 6.2 (DA, Note) recommends reading, single and as
    range bounds (PS3.4 C.2.2.2.5), is the same date as YYYYMMDD."""
    assert q(Level.STUDY, {"StudyDate": "1997.04.24"}).matches[0].values == ("19970424",)
    m = q(Level.STUDY, {"StudyDate": "1997.04.01-19970430"}).matches[0]
    assert (m.low, m.high) == ("19970401", "19970430")
    m = q(Level.STUDY, {"PatientBirthDate": "-1951.02.03"}).matches[0]
    assert (m.low, m.high) == (None, "19510203")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("StudyDate", "2020-01"),
        ("StudyDate", "2020-01-01"),
        ("StudyDate", "20200230"),
        ("StudyDate", "2020010"),
        ("StudyDate", "20200101-20191231"),  # reversed
        ("StudyDate", "-"),
        ("StudyDate", "2020*"),
        ("StudyDate", "2020.02.30"),
        ("StudyDate", "2020.1.1"),
        ("StudyDate", "20.01.2020"),
        ("StudyDate", "2020.01.01.01"),
        ("StudyDate", "2020.02.01-2020.01.01"),  # reversed
        ("StudyTime", "2500"),
        ("StudyTime", "10:30"),
        ("StudyTime", "1100-1000"),
        ("StudyTime", "103000.1234567"),
        ("StudyInstanceUID", "1.2.a-c"),
        ("StudyInstanceUID", "1.2 3"),
        ("StudyInstanceUID", "."),
        ("StudyInstanceUID", "1.2.*"),
        ("StudyInstanceUID", "1..2"),
        ("StudyInstanceUID", "1.2,"),
        ("StudyInstanceUID", "1." + "2" * 70),
        ("StudyInstanceUID", ",".join(["1.2"] * 1001)),
        ("StudyInstanceUID", "1.2' OR '1'='1"),
        ("PatientID", "a\\b"),  # several values
        ("PatientID", "x" * 2000),
        ("PatientID", "*a" * 20),
        ("PatientID", "a\x00b"),
        ("PatientID", "a\nb"),
        ("PatientID", "a\udcffb"),  # undecodable percent-escape
        ("ModalitiesInStudy", "CT,C*"),
        ("ModalitiesInStudy", "CT,,MR"),
    ],
)
def test_malformed_values_are_rejected(key: str, value: str) -> None:
    with pytest.raises(BadRequest) as err:
        q(Level.STUDY, {key: value})
    assert err.value.reason.startswith(key)
    assert len(err.value.reason) < 200  # a hostile value is not echoed in full


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("PatientName", "Qzsecret^Jane\\Other^Guy", "has several values"),
        ("PatientID", "QZSECRET\\QZOTHER", "has several values"),
        ("PatientBirthDate", "Qzsecret", "is not a date"),
        ("PatientBirthDate", "19230917-19000101", "ends before it starts"),
        ("StudyDate", "2024130", "is not a date"),
        ("AccessionNumber", "*Qzsecret" * 17, "wildcards"),
        ("ReferringPhysicianName", "Qzsecret\x01", "control character"),
        ("StudyDescription", "Qzsecret\\x", "has several values"),
        ("StudyInstanceUID", "Qzsecret^Jane", "is not a valid UID"),
    ],
)
def test_reasons_never_quote_identifying_values(key: str, value: str, problem: str) -> None:
    """Reasons are logged: for an attribute that may identify a patient (PS3.15 Table E.1-1,
    nubis.dicom.identifying) they name the attribute and the problem, never the value."""
    with pytest.raises(BadRequest) as err:
        q(Level.STUDY, {key: value})
    reason = err.value.reason
    assert reason.startswith(key) and problem in reason, reason
    for fragment in ("Qzsecret", "QZSECRET", "19230917", "2024130"):
        assert fragment not in reason, reason


def test_reasons_quote_values_of_other_attributes() -> None:
    with pytest.raises(BadRequest) as err:
        q(Level.SERIES, {"Modality": "CTX\\MRX"})
    assert "has several values" in err.value.reason and "CTX" in err.value.reason


@pytest.mark.parametrize("value", ["10", "1.5", "1*", "abc", "99999999999"])
def test_malformed_integers_are_rejected(value: str) -> None:
    if value == "10":
        assert q(Level.SERIES, {"SeriesNumber": value}).matches[0].values == (10,)
        return
    with pytest.raises(BadRequest, match="SeriesNumber"):
        q(Level.SERIES, {"SeriesNumber": value})


def test_non_conformant_stored_uids_are_matchable() -> None:
    """Issue 12: objects stored under hexadecimal digits and dots (nubis.dicom.uids; pydicom's
    bad_sequence.dcm) stay findable, as keys and in the path."""
    hex_uid = "05fa52f0e599f17b8186ff18fcdf2b5570a52206a75c4d03afebf5c475dc8758"
    assert q(Level.STUDY, {"StudyInstanceUID": hex_uid}).matches[0].values == (hex_uid,)
    assert q(Level.SERIES, {}, study_uid=hex_uid).study_uid == hex_uid


def test_path_scope_is_validated() -> None:
    with pytest.raises(BadRequest, match="path"):
        q(Level.SERIES, {}, study_uid="1.2.x_y")
    with pytest.raises(BadRequest, match="path"):
        q(Level.INSTANCE, {}, study_uid="1.2", series_uid="' or 1=1 --")


def test_fold_person_name() -> None:
    assert fold_person_name("Doe^John^^") == "DOE^JOHN"
    assert fold_person_name(" doe^john=== ") == "DOE^JOHN"
    assert fold_person_name("Yamada^Tarou=山田^太郎=") == "YAMADA^TAROU=山田^太郎"


def test_every_matching_key_compiles_at_every_level(conn: sa.Connection) -> None:
    for spec in MATCHING_KEYS.values():
        for level in Level:
            if spec.level.depth > level.depth:
                continue
            value = {"UI": "1.2", "DA": "20200101", "TM": "01", "IS": "99"}.get(spec.vr, "x")
            assert search(conn, q(level, [(spec.name, value)])) == []


# --- search: study level ------------------------------------------------------------------------


def test_study_result_format(conn: sa.Connection) -> None:
    (r,) = run(conn, Level.STUDY, {"StudyInstanceUID": "1.2.1"})
    assert r["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert r["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert r["00201206"] == {"vr": "IS", "Value": [2]}
    assert r["00201208"] == {"vr": "IS", "Value": [4]}
    assert r["00080020"] == {"vr": "DA", "Value": ["20200115"]}
    assert r["00080030"] == {"vr": "TM", "Value": ["103000"]}
    assert r["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert r["00080201"] == {"vr": "SH", "Value": ["+0100"]}
    assert r["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "House^Gregory"}]}
    assert "00081190" not in r  # Retrieve URL is the HTTP layer's
    assert "00081030" not in r  # not a default, not asked for
    assert list(r) == sorted(r)


def test_empty_attributes_are_returned_without_value(conn: sa.Connection) -> None:
    (r,) = run(conn, Level.STUDY, {"StudyInstanceUID": "1.2.4"})
    assert r["00080050"] == {"vr": "SH"}
    assert r["00080061"] == {"vr": "CS"}
    assert r["00080020"] == {"vr": "DA"}


def test_multi_group_person_name(conn: sa.Connection) -> None:
    (r,) = run(conn, Level.STUDY, {"StudyInstanceUID": "1.2.3"})
    assert r["00100010"]["Value"] == [{"Alphabetic": "doe^jane", "Ideographic": "ドウ^ジェーン"}]


def test_partition_isolation(conn: sa.Connection) -> None:
    assert values(run(conn, Level.STUDY, {"PatientID": "P1"}), STUDY_UID) == ["1.2.1", "1.2.3"]
    other = run(conn, Level.STUDY, {"PatientID": "P1"}, partition="other")
    assert len(other) == 1 and other[0]["00080061"]["Value"] == ["CT"]
    assert run(conn, Level.STUDY, {}, partition="nobody") == []
    assert len(run(conn, Level.INSTANCE, {}, partition="other")) == 1


def test_single_value_is_case_sensitive(conn: sa.Connection) -> None:
    assert values(run(conn, Level.STUDY, {"PatientID": "p1"}), STUDY_UID) == ["1.2.4"]
    assert run(conn, Level.STUDY, {"AccessionNumber": "acc1"}) == []


def test_person_names_ignore_case(conn: sa.Connection) -> None:
    found = values(run(conn, Level.STUDY, {"PatientName": "doe^john"}), STUDY_UID)
    assert found == ["1.2.1", "1.2.4"]
    assert values(run(conn, Level.STUDY, {"PatientName": "DOE^JOHN^^"}), STUDY_UID) == found
    # A name without "=" matches the alphabetic group of a multi-group name.
    assert values(run(conn, Level.STUDY, {"PatientName": "Doe^Jane"}), STUDY_UID) == ["1.2.3"]
    assert run(conn, Level.STUDY, {"PatientName": "ドウ^ジェーン"}) == []
    assert values(run(conn, Level.STUDY, {"PatientName": "*=ドウ*"}), STUDY_UID) == ["1.2.3"]
    assert values(run(conn, Level.STUDY, {"ReferringPhysicianName": "house*"}), STUDY_UID) == [
        "1.2.1"
    ]
    assert values(run(conn, Level.STUDY, {"PatientName": "o'brien^pat"}), STUDY_UID) == ["1.2.5"]


def test_wildcards(conn: sa.Connection) -> None:
    assert values(run(conn, Level.STUDY, {"PatientName": "do*"}), STUDY_UID) == [
        "1.2.1",
        "1.2.3",
        "1.2.4",
    ]
    assert values(run(conn, Level.STUDY, {"PatientID": "P?"}), STUDY_UID) == [
        "1.2.1",
        "1.2.2",
        "1.2.3",
    ]
    # Wildcards outside PN are case-sensitive (PS3.4 C.2.2.2.4), which SQLite's LIKE is not.
    assert values(run(conn, Level.STUDY, {"PatientID": "p*"}), STUDY_UID) == ["1.2.4"]
    assert values(run(conn, Level.STUDY, {"AccessionNumber": "*c1"}), STUDY_UID) == []
    assert values(run(conn, Level.STUDY, {"StudyID": "S*"}), STUDY_UID) == ["1.2.1"]


def test_person_name_wildcards_fold_like_stored_names(conn: sa.Connection) -> None:
    """Trailing empty PN components and groups are insignificant (PS3.5 6.2): a wildcard key
    (PS3.4 C.2.2.2.4) is folded as stored names are, so with them it finds what it finds
    without them; a pattern that folds to "*" is universal matching (C.2.2.2.3)."""
    assert q(Level.STUDY, {"PatientName": "?UBOIS^QUINN^^^"}).matches[0].values == ("?UBOIS^QUINN",)
    assert q(Level.STUDY, {"PatientName": "*^^="}).matches[0].kind is MatchKind.UNIVERSAL
    expected = values(run(conn, Level.STUDY, {"PatientName": "d?e^john"}), STUDY_UID)
    assert expected == ["1.2.1", "1.2.4"]
    for pattern in ("d?e^john^^", "d?e^john^^^=", "DO*^JOHN^ ^", "d*^jo*^^^^"):
        assert values(run(conn, Level.STUDY, {"PatientName": pattern}), STUDY_UID) == expected


def test_sql_wildcard_characters_in_data_are_literal(conn: sa.Connection) -> None:
    assert values(run(conn, Level.STUDY, {"AccessionNumber": "ACC_*"}), STUDY_UID) == ["1.2.2"]
    assert values(run(conn, Level.STUDY, {"AccessionNumber": "ACC%?"}), STUDY_UID) == ["1.2.3"]
    assert values(run(conn, Level.STUDY, {"AccessionNumber": "ACC_2"}), STUDY_UID) == ["1.2.2"]
    assert run(conn, Level.STUDY, {"AccessionNumber": "ACC%"}) == []
    # "%_" must not act as "any string, any character": "50xyoff" stays unmatched.
    assert values(run(conn, Level.STUDY, {"StudyDescription": "*50%_off"}), STUDY_UID) == ["1.2.1"]
    assert values(run(conn, Level.STUDY, {"PatientID": "P[1]"}), STUDY_UID) == ["1.2.5"]
    assert values(run(conn, Level.STUDY, {"PatientID": "P[1]*"}), STUDY_UID) == ["1.2.5"]
    assert values(run(conn, Level.STUDY, {"PatientID": "P[?]"}), STUDY_UID) == ["1.2.5"]


def test_like_translation_for_other_databases() -> None:
    assert _like_pattern("a*b?c%d_e\\f") == "a%b_c\\%d\\_e\\\\f"
    query = q(Level.STUDY, {"AccessionNumber": "A_*"})
    sql = str(_plan(query, "postgresql", 10).statement.compile(dialect=postgresql.dialect()))
    assert "LIKE" in sql and "ESCAPE" in sql and "GLOB" not in sql


def test_uid_lists(conn: sa.Connection) -> None:
    found = run(conn, Level.STUDY, {"StudyInstanceUID": "1.2.3,1.2.1,9.9"})
    assert values(found, STUDY_UID) == ["1.2.1", "1.2.3"]
    found = run(conn, Level.STUDY, {"StudyInstanceUID": "1.2.3\\1.2.2"})
    assert values(found, STUDY_UID) == ["1.2.2", "1.2.3"]


def test_universal_matching_returns_the_attribute(conn: sa.Connection) -> None:
    found = run(conn, Level.STUDY, {"StudyDescription": "", "PatientID": "P2"})
    assert found[0]["00081030"] == {"vr": "LO", "Value": ["Head 50xyoff"]}
    assert len(run(conn, Level.STUDY, {"StudyDescription": ""})) == 5


def test_modalities_in_study(conn: sa.Connection) -> None:
    assert values(run(conn, Level.STUDY, {"ModalitiesInStudy": "MR"}), STUDY_UID) == ["1.2.1"]
    assert values(run(conn, Level.STUDY, {"ModalitiesInStudy": "CT"}), STUDY_UID) == [
        "1.2.1",
        "1.2.2",
    ]
    found = run(conn, Level.STUDY, {"ModalitiesInStudy": "US\\MR"})
    assert values(found, STUDY_UID) == ["1.2.1", "1.2.3"]
    # A wildcard matches one modality; it never spans the joined "CT\MR".
    assert run(conn, Level.STUDY, {"ModalitiesInStudy": "C*R"}) == []
    assert values(run(conn, Level.STUDY, {"ModalitiesInStudy": "U?"}), STUDY_UID) == ["1.2.3"]


def test_date_ranges(conn: sa.Connection) -> None:
    def dates(value: str) -> list[str]:
        return values(run(conn, Level.STUDY, {"StudyDate": value}), STUDY_UID)

    assert dates("20200115") == ["1.2.1"]
    assert dates("20200101-20200131") == ["1.2.1"]
    assert dates("20200115-20200201") == ["1.2.1", "1.2.2"]  # inclusive
    assert dates("-20200115") == ["1.2.1", "1.2.3"]  # empty dates do not match
    assert dates("20200116-") == ["1.2.2"]
    assert values(run(conn, Level.STUDY, {"PatientBirthDate": "-19700101"}), STUDY_UID) == ["1.2.1"]


def test_time_ranges(conn: sa.Connection) -> None:
    def times(value: str) -> list[str]:
        return values(run(conn, Level.STUDY, {"StudyTime": value}), STUDY_UID)

    assert times("10") == ["1.2.1"]  # 10:00:00 to 10:59:59.999999
    assert times("1030") == ["1.2.1"]
    assert times("1031") == []
    assert times("08-1030") == ["1.2.1", "1.2.2"]
    assert times("2359-") == ["1.2.3"]
    assert times("-0800") == ["1.2.2"]


def test_combined_date_time_range(conn: sa.Connection) -> None:
    def both(date: str, time: str, combine: bool) -> list[str]:
        base = q(Level.STUDY, {"StudyDate": date, "StudyTime": time})
        return values(search(conn, dataclasses.replace(base, combine_datetime=combine)), STUDY_UID)

    # Independently the time range applies to every day; combined it is one span
    # 2019-12-31 00:00 .. 2020-01-15 10:29:59.999999 (PS3.4 C.2.2.2.5).
    assert both("20191231-20200115", "0000-1029", combine=False) == []
    assert both("20191231-20200115", "0000-1029", combine=True) == ["1.2.3"]
    assert both("20191231-20200115", "2300-2359", combine=False) == ["1.2.3"]
    assert both("20191231-20200115", "2300-2359", combine=True) == ["1.2.1", "1.2.3"]
    assert both("-20200115", "-1030", combine=True) == ["1.2.1", "1.2.3"]
    assert both("20200115-", "1031-", combine=True) == ["1.2.2"]


def test_fuzzy_person_names(conn: sa.Connection) -> None:
    def fuzzy(value: str) -> list[str]:
        params = {"PatientName": value, "fuzzymatching": "true"}
        return values(run(conn, Level.STUDY, params), STUDY_UID)

    assert fuzzy("jo") == ["1.2.1", "1.2.2", "1.2.4"]  # Jones follows a hyphen
    assert fuzzy("jo do") == ["1.2.1", "1.2.4"]
    assert fuzzy("jones") == ["1.2.2"]  # after a hyphen
    assert fuzzy("an") == ["1.2.2"]
    assert fuzzy("ジェ") == ["1.2.3"]  # any component group
    assert fuzzy("oe") == []  # words must start with the value
    assert fuzzy("j?n") == ["1.2.2", "1.2.3"]
    assert len(fuzzy("^")) == 5  # no words: no constraint
    # Without fuzzymatching the same value is a plain single value match.
    assert run(conn, Level.STUDY, {"PatientName": "jo"}) == []


def test_includefield_from_stored_attributes(conn: sa.Connection) -> None:
    params = [("StudyInstanceUID", "1.2.1"), ("includefield", "StudyDescription,00100021")]
    (r,) = run(conn, Level.STUDY, params)
    assert r["00081030"] == {"vr": "LO", "Value": ["Head 50%_off"]}
    assert r["00100021"] == {"vr": "LO", "Value": ["HOSP"]}
    # Asked for but absent: returned empty, as C-FIND does.
    params = [("StudyInstanceUID", "1.2.2"), ("includefield", "IssuerOfPatientID,00091010")]
    (r,) = run(conn, Level.STUDY, params)
    assert r["00100021"] == {"vr": "LO"}
    assert "00091010" not in r  # private, unknown VR: only returned when stored


def test_includefield_all(conn: sa.Connection) -> None:
    (r,) = run(conn, Level.STUDY, [("StudyInstanceUID", "1.2.1"), ("includefield", "all")])
    assert r["00091010"]["Value"] == ["private"]
    assert r["00201206"]["Value"] == [2]
    (i,) = run(conn, Level.INSTANCE, [("SOPInstanceUID", "1.2.1.1.1"), ("includefield", "all")])
    assert "7FE00010" not in i  # bulk data is never a query result
    assert i["00089121"]["Value"] == [{"00280002": {"vr": "US", "Value": [1]}}]
    assert i["00080008"]["Value"] == ["ORIGINAL", "PRIMARY"]
    assert i["00280010"] == {"vr": "US", "Value": [512]}
    assert i[SERIES_UID]["Value"] == ["1.2.1.1"]


# --- search: series and instance level ----------------------------------------------------------


def test_series_within_a_study(conn: sa.Connection) -> None:
    found = run(conn, Level.SERIES, {}, study_uid="1.2.1")
    assert values(found, SERIES_UID) == ["1.2.1.1", "1.2.1.2"]
    first = found[0]
    assert first["00080060"]["Value"] == ["CT"]
    assert first["00200011"] == {"vr": "IS", "Value": [1]}
    assert first["00201209"] == {"vr": "IS", "Value": [3]}
    assert first["00400244"]["Value"] == ["20200115"]
    assert first["00400245"]["Value"] == ["1031"]
    assert first[STUDY_UID]["Value"] == ["1.2.1"]
    assert "00100020" not in first  # study defaults only for queries across studies
    assert first["00400275"]["Value"] == [
        {"00400009": {"vr": "SH", "Value": ["SPS1"]}, "00401001": {"vr": "SH", "Value": ["RP1"]}},
        {"00400009": {"vr": "SH", "Value": ["SPS2"]}, "00401001": {"vr": "SH"}},
    ]
    assert found[1]["00400275"] == {"vr": "SQ"}
    assert run(conn, Level.SERIES, {}, study_uid="9.9") == []


def test_relational_series_query(conn: sa.Connection) -> None:
    found = run(conn, Level.SERIES, {"PatientID": "P1", "Modality": "CT"})
    assert values(found, SERIES_UID) == ["1.2.1.1"]
    assert found[0]["00100020"]["Value"] == ["P1"]  # study defaults across studies
    assert found[0]["00201208"]["Value"] == [4]
    assert values(run(conn, Level.SERIES, {"SeriesNumber": "2"}), SERIES_UID) == [
        "1.2.1.2",
        "1.2.3.1",
    ]
    found = run(conn, Level.SERIES, {"ModalitiesInStudy": "MR"})
    assert values(found, SERIES_UID) == ["1.2.1.1", "1.2.1.2"]
    # Series number compares numerically: "10" is not "1" followed by anything.
    assert values(run(conn, Level.SERIES, {"SeriesNumber": "10"}), SERIES_UID) == ["1.2.2.1"]
    assert values(run(conn, Level.SERIES, {"Modality": "C?"}), SERIES_UID) == [
        "1.2.1.1",
        "1.2.2.1",
    ]


def test_request_attribute_keys(conn: sa.Connection) -> None:
    key = "RequestAttributesSequence.ScheduledProcedureStepID"
    assert values(run(conn, Level.SERIES, {key: "SPS2"}), SERIES_UID) == ["1.2.1.1"]
    assert values(run(conn, Level.SERIES, {key: "SPS*"}), SERIES_UID) == ["1.2.1.1"]
    assert run(conn, Level.SERIES, {key: "sps1"}) == []
    rp = "00400275.00401001"
    assert values(run(conn, Level.SERIES, {rp: "RP1"}), SERIES_UID) == ["1.2.1.1"]
    found = run(conn, Level.INSTANCE, {rp: "RP1"}, study_uid="1.2.1")
    assert values(found, SOP_UID) == ["1.2.1.1.1", "1.2.1.1.2", "1.2.1.1.3"]


def test_instances(conn: sa.Connection) -> None:
    found = run(conn, Level.INSTANCE, {}, study_uid="1.2.1", series_uid="1.2.1.1")
    assert values(found, SOP_UID) == ["1.2.1.1.1", "1.2.1.1.2", "1.2.1.1.3"]
    first = found[0]
    assert first["00080016"] == {"vr": "UI", "Value": [CT]}
    assert first["00200013"] == {"vr": "IS", "Value": [1]}
    assert first["00280010"] == {"vr": "US", "Value": [512]}
    assert first["00280008"] == {"vr": "IS"}
    assert first["00080056"]["Value"] == ["ONLINE"]
    assert first[STUDY_UID]["Value"] == ["1.2.1"]
    assert first[SERIES_UID]["Value"] == ["1.2.1.1"]
    assert "00080060" not in first and "00100020" not in first

    assert values(run(conn, Level.INSTANCE, {"SOPClassUID": MR}), SOP_UID) == ["1.2.1.2.1"]
    found = run(conn, Level.INSTANCE, {"InstanceNumber": "1", "PatientID": "P1"})
    assert values(found, SOP_UID) == ["1.2.1.1.1", "1.2.1.2.1"]
    assert found[0]["00080060"]["Value"] == ["CT"]  # series defaults across series
    assert found[0]["00100020"]["Value"] == ["P1"]
    assert run(conn, Level.INSTANCE, {}, study_uid="1.2.2", series_uid="1.2.1.1") == []


def test_instance_includefield_from_metadata(conn: sa.Connection) -> None:
    params = [("SOPInstanceUID", "1.2.1.1.1"), ("includefield", "ImageType,PixelData")]
    (r,) = run(conn, Level.INSTANCE, params)
    assert r["00080008"]["Value"] == ["ORIGINAL", "PRIMARY"]
    # Stored only as bulk data, which QIDO-RS results do not hold: left out, never returned
    # empty with a VR guessed from the dictionary (OB or OW).
    assert "7FE00010" not in r


# --- paging -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=_BACKENDS)
def many(request: pytest.FixtureRequest) -> Iterator[sa.Connection]:
    engine = _engine(request, "qido_paging")
    with engine.connect() as c:
        schema.metadata.create_all(c)
        rows = [
            dict(
                id=i,
                partition="default",
                study_uid=f"2.25.{i}",
                patient_id=f"PID{i % 7}",
                study_date=f"2020{1 + i % 12:02d}01",
                modalities="CT",
                attrs="{}",
                created_at=0,
                updated_at=0,
            )
            for i in range(1, 501)
        ]
        c.execute(schema.studies.insert(), rows)
        c.commit()
        if c.dialect.name == "postgresql":
            c.exec_driver_sql("ANALYZE")  # what autovacuum does for a real table
        yield c


@pytest.mark.parametrize("params", [{}, {"PatientID": "PID3"}, {"StudyDate": "20200301-20200901"}])
def test_paging_visits_every_row_once(many: sa.Connection, params: dict[str, str]) -> None:
    everything = run(many, Level.STUDY, params, max_limit=1000)
    seen: list[str] = []
    offset = 0
    while True:
        page = run(many, Level.STUDY, {**params, "limit": "7", "offset": str(offset)})
        if not page:
            break
        seen += values(page, STUDY_UID)
        offset += 7
    assert seen == values(everything, STUDY_UID)
    assert len(seen) == len(set(seen)) > 0


def test_search_page_reports_more_when_capped(many: sa.Connection) -> None:
    capped = search_page(many, q(Level.STUDY, {}, max_limit=10))
    assert len(capped.items) == 10 and capped.more
    last = search_page(many, q(Level.STUDY, {"offset": "495"}, max_limit=10))
    assert len(last.items) == 5 and not last.more
    chosen = search_page(many, q(Level.STUDY, {"limit": "10"}, max_limit=10))
    assert not chosen.more  # the client's own limit: nothing to warn about


def test_one_statement_per_search(conn: sa.Connection) -> None:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = conn.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        run(conn, Level.SERIES, [("PatientID", "P1"), ("includefield", "all")])
        run(conn, Level.INSTANCE, [("PatientID", "P1"), ("includefield", "all")])
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 2


def _plan_text(conn: sa.Connection, params: dict[str, str] | Any) -> str:
    query = q(Level.STUDY, params) if isinstance(params, dict) else params
    stmt = _plan(query, conn.dialect.name, query.limit).statement
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return "\n".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    # 500 rows fit in a page or two, where a sequential scan is cheapest: forbid it, so the
    # plan shows which index the query *can* use, as it must at millions of rows.
    conn.exec_driver_sql("SET enable_seqscan = off")
    try:
        return "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))
    finally:
        conn.exec_driver_sql("RESET enable_seqscan")


def test_query_plans_use_the_indexes(many: sa.Connection) -> None:
    assert "ix_studies_patient_id" in _plan_text(many, {"PatientID": "PID3"})
    assert "ix_studies_study_date" in _plan_text(many, {"StudyDate": "20200101-20200301"})
    assert "ix_studies_patient_name" in _plan_text(many, {"PatientName": "doe^john"})
    assert "ix_studies_patient_name" in _plan_text(many, {"PatientName": "doe*"})
    # Nothing selective: walk the primary key up to the page end instead of sorting the whole
    # partition (the page itself, at most 100 rows, may be sorted again at the end).
    unfiltered = _plan_text(many, {})
    if many.dialect.name == "sqlite":
        assert "TEMP B-TREE" not in unfiltered
    else:
        assert re.search(r"Limit .*\n\s*->  Index Scan using studies_pkey", unfiltered)


# --- order (the web face's study browser) -------------------------------------------------------

STUDY_DATE, PATIENT_ID_TAG = 0x00080020, 0x00100020


@pytest.mark.parametrize(
    ("tag", "column"),
    [(STUDY_DATE, "study_date"), (PATIENT_ID_TAG, "patient_id"), (None, "id")],
)
@pytest.mark.parametrize("descending", [False, True])
def test_ordered_paging_visits_every_row_once_in_order(
    many: sa.Connection, tag: int | None, column: str, descending: bool
) -> None:
    order = Order(tag, descending)
    seen: list[str] = []
    offset = 0
    while True:
        query = dataclasses.replace(
            q(Level.STUDY, {"limit": "7", "offset": str(offset)}), order=order
        )
        page = search(many, query)
        if not page:
            break
        seen += values(page, STUDY_UID)
        offset += 7
    stored = many.execute(sa.select(schema.studies.c.study_uid, schema.studies.c[column])).all()
    assert len(seen) == len(set(seen)) == len(stored) == 500
    # The column, then arrival (the primary key) among equals, both reversed when descending.
    key = {uid: (value, int(uid.rsplit(".", 1)[1])) for uid, value in stored}
    assert seen == sorted(seen, key=key.__getitem__, reverse=descending)


def test_order_within_matches(many: sa.Connection) -> None:
    query = dataclasses.replace(
        q(Level.STUDY, {"PatientID": "PID3"}), order=Order(STUDY_DATE, True)
    )
    dates = values(search(many, query), "00080020")
    assert len(dates) == 72 and dates == sorted(dates, reverse=True)


def test_only_indexed_study_attributes_order() -> None:
    with pytest.raises(ValueError, match="not an indexed attribute"):
        Order(0x00081030)  # StudyDescription
    with pytest.raises(ValueError, match="study level"):
        dataclasses.replace(q(Level.SERIES, {}), order=Order(STUDY_DATE))
    # QIDO-RS never orders: the server's order (primary key) is kept.
    assert q(Level.STUDY, {}).order is None


def test_ordered_query_plans_read_the_index_of_the_order(many: sa.Connection) -> None:
    for tag, index in (
        (STUDY_DATE, "ix_studies_study_date"),
        (PATIENT_ID_TAG, "ix_studies_patient_id"),
    ):
        query = dataclasses.replace(q(Level.STUDY, {}), order=Order(tag, True))
        plan = _plan_text(many, query)
        if many.dialect.name == "sqlite":
            # The page's keys come in order from the index; only the page itself is sorted.
            assert f"SEARCH studies USING COVERING INDEX {index} (partition=?)" in plan, plan
            assert plan.count("TEMP B-TREE") == 1, plan
        else:
            # Read backwards along the index, the column's ties sorted within it (incremental
            # sort), never the whole partition.
            assert re.search(
                rf"Presorted Key: .*\n\s*->  Index .*Scan Backward using {index}", plan
            )


def test_grant_scoped_searches_start_from_the_grants(many: sa.Connection) -> None:
    """A referrer's search finds its studies through its grants (per patient and per study, in
    its tenant only, each study once) instead of testing every study of the tenant."""
    grants = [
        dict(subject="ref-t", tenant="default", patient_id="PID3"),
        dict(subject="ref-t", tenant="default", study_uid="2.25.10"),  # PID3 too: granted twice
        dict(subject="ref-t", tenant="default", study_uid="2.25.11"),
        dict(subject="ref-t", tenant="other", patient_id="PID5"),  # another tenant's patient
        dict(subject="someone-else", tenant="default", patient_id="PID6"),
    ]
    many.execute(
        schema.grants.insert(),
        [{"patient_id": None, "study_uid": None, **g, "created_at": 0} for g in grants],
    )
    many.commit()
    try:
        expected = sorted({f"2.25.{i}" for i in range(1, 501) if i % 7 == 3} | {"2.25.11"})
        for order in (None, Order(STUDY_DATE, True), Order(PATIENT_ID_TAG)):
            query = dataclasses.replace(
                q(Level.STUDY, {}, max_limit=1000), grantee="ref-t", order=order
            )
            uids = values(search(many, query), STUDY_UID)
            assert sorted(uids) == expected and len(uids) == len(set(uids))
    finally:
        many.execute(schema.grants.delete())
        many.commit()


@pytest.fixture(params=_BACKENDS)
def empty_index(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    engine = _engine(request, "qido_grants")
    yield engine
    engine.dispose()


def test_a_referrers_search_reads_only_its_granted_studies(empty_index: sa.Engine) -> None:
    """With statistics (Index.open has SQLite gather them, autovacuum PostgreSQL), a search
    for a referrer with a few grants in a large tenant reads the granted studies through the
    grants and the study indexes, not every study of the tenant."""
    with empty_index.connect() as c:
        schema.metadata.create_all(c)
        c.execute(
            schema.studies.insert(),
            [
                dict(
                    id=i,
                    partition="default",
                    study_uid=f"2.25.{i}",
                    patient_id=f"PID{i % 3000}",
                    study_date=f"20{10 + i % 15}0101",
                    modalities="CT",
                    attrs="{}",
                    created_at=0,
                    updated_at=0,
                )
                for i in range(1, 6001)
            ],
        )
        c.execute(
            schema.grants.insert().values(created_at=0),
            [
                dict(subject="ref", tenant="default", patient_id="PID7", study_uid=None),
                dict(subject="ref", tenant="default", patient_id=None, study_uid="2.25.12"),
            ],
        )
        c.exec_driver_sql("ANALYZE")
        for order in (None, Order(STUDY_DATE, True)):
            query = dataclasses.replace(q(Level.STUDY, {}), grantee="ref", order=order)
            assert sorted(values(search(c, query), STUDY_UID)) == [
                "2.25.12",
                "2.25.3007",
                "2.25.7",
            ]
            plan = _plan_text(c, query)
            if c.dialect.name == "sqlite":
                assert "SCAN studies" not in plan, plan
                assert "ix_studies_patient_id (partition=? AND patient_id=?)" in plan, plan
            else:
                assert "Seq Scan on studies" not in plan, plan
                assert re.search(r"Index Scan using ix_studies_patient_id on studies", plan)


# --- hostile input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "' OR '1'='1",
        "'; DROP TABLE studies; --",
        '" OR 1=1 --',
        "%",
        "_",
        "\\",
        "[",
        "]",
        "*[*",
        "?" * 64,
        "%' UNION SELECT sqlite_version() --",
        "x" * 1024,
        "é" * 500,
        "\U0001f600*",
    ],
)
@pytest.mark.parametrize("key", ["PatientID", "PatientName", "AccessionNumber", "StudyDate"])
def test_hostile_values_never_crash(conn: sa.Connection, key: str, value: str) -> None:
    for fuzzy in ("true", "false"):
        try:
            found = run(conn, Level.SERIES, {key: value, "fuzzymatching": fuzzy})
        except BadRequest:
            continue
        if value not in ("?" * 64,) and "*" not in value:
            assert found == []
    assert conn.execute(sa.select(sa.func.count()).select_from(schema.studies)).scalar() == 6
