"""C-FIND identifiers become the same Query as QIDO-RS (PS3.4 C.2.2.2, C.4.1.1.3, C.6)."""

from __future__ import annotations

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from nubis.errors import BadRequest
from nubis.model.cfind import parse_cfind
from nubis.model.query import Level, MatchKind, parse_qido


def identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("level", "keys", "params"),
    [
        ("STUDY", {"PatientID": "P1"}, [("PatientID", "P1")]),
        ("STUDY", {"PatientName": "doe*"}, [("PatientName", "doe*")]),
        ("STUDY", {"StudyDate": "20240101-20240131"}, [("StudyDate", "20240101-20240131")]),
        ("STUDY", {"StudyTime": "1030"}, [("StudyTime", "1030")]),
        ("STUDY", {"ModalitiesInStudy": ["CT", "MR"]}, [("ModalitiesInStudy", "CT,MR")]),
        ("STUDY", {"StudyInstanceUID": ["1.2.3", "1.2.4"]}, [("StudyInstanceUID", "1.2.3,1.2.4")]),
        ("SERIES", {"StudyInstanceUID": "1.2.3", "Modality": "CT"},
         [("StudyInstanceUID", "1.2.3"), ("Modality", "CT")]),
        ("IMAGE", {"SeriesInstanceUID": "1.2.3.4", "InstanceNumber": "7"},
         [("SeriesInstanceUID", "1.2.3.4"), ("InstanceNumber", "7")]),
    ],
)  # fmt: skip
def test_same_matches_as_qido(level: str, keys: dict[str, object], params: list) -> None:
    """C.2.2.2: single value, wildcard, range, list of UIDs and multi-valued keys match as in
    QIDO-RS, so the same request finds the same entities through either front door."""
    q = parse_cfind(level, identifier(level, **keys), model="study", max_limit=50)
    qido_level = {"STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE}[level]
    expected = parse_qido(qido_level, params, max_limit=50)
    assert q.level is expected.level
    assert set(q.matches) == set(expected.matches)  # a Dataset iterates in tag order
    assert q.limit == 50 and q.limit_capped


def test_empty_values_are_return_keys() -> None:
    """C.2.2.2.3: an empty key is universal matching; it is returned, not matched."""
    q = parse_cfind("STUDY", identifier("STUDY", PatientName="", StudyDate="", AccessionNumber="*"),
                    model="study", max_limit=10)  # fmt: skip
    assert q.matches == ()
    assert q.include != "all"
    for keyword in ("PatientName", "StudyDate", "AccessionNumber", "StudyInstanceUID"):
        assert tag_for_keyword(keyword) in q.include, keyword


def test_unsupported_and_lower_level_keys_are_not_matched() -> None:
    """C.4.1.2.2: optional keys the SCP cannot match are return keys; C.4.1.2.1: keys below
    the query level are not matched."""
    q = parse_cfind(
        "STUDY",
        identifier("STUDY", PatientWeight="70", Modality="CT", PatientID="X"),
        model="study",
        max_limit=10,
    )
    assert [m.name for m in q.matches] == ["PatientID"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_patient_level() -> None:
    """Patient Root PATIENT level (C.6.1.1.2) runs on studies with patient keys only."""
    q = parse_cfind(
        "PATIENT",
        identifier("PATIENT", PatientName="Doe^*", PatientID="", StudyDate="2024"),
        model="patient",
        max_limit=10,
    )
    assert q.level is Level.STUDY
    assert [(m.name, m.kind) for m in q.matches] == [("PatientName", MatchKind.WILDCARD)]
    with pytest.raises(BadRequest, match="Study Root"):
        parse_cfind("PATIENT", identifier("PATIENT"), model="study", max_limit=10)


def test_sequence_matching() -> None:
    """C.2.2.2.6: a Request Attributes Sequence item's keys match like QIDO's nested keys."""
    item = Dataset()
    item.RequestedProcedureID = "RP7"
    item.ScheduledProcedureStepID = ""
    ds = identifier("SERIES", RequestAttributesSequence=[item])
    q = parse_cfind("SERIES", ds, model="study", max_limit=10)
    expected = parse_qido(
        Level.SERIES, [("RequestAttributesSequence.RequestedProcedureID", "RP7")], max_limit=10
    )
    assert q.matches == expected.matches


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("WORKLIST", {}),
        ("STUDY", {"StudyDate": "2024-13-45"}),
        ("STUDY", {"StudyDate": "20240201-20240101"}),
        ("STUDY", {"StudyInstanceUID": "1.2.xyz"}),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom notices too
def test_bad_identifiers(level: str, keys: dict[str, object]) -> None:
    """C.4.1.1.4: an identifier that cannot be understood is refused (0xA900 / 0xC000)."""
    with pytest.raises(BadRequest):
        parse_cfind(level, identifier(level, **keys), model="study", max_limit=10)
