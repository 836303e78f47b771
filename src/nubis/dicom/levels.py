"""Which attributes belong to the patient/study and to the series level.

The index keeps, beside its columns, the DICOM JSON of these attributes for each study and
series, so QIDO-RS ``includefield`` and C-FIND return keys can name attributes that have no
column. The lists follow the Patient, General Study, Patient Study, General Series, General
Equipment and Frame of Reference modules (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2, C.7.3.1, C.7.5.1,
C.7.4.1) and the study/series return keys of PS3.18 Tables 10.6.3-3 and 10.6.3-4.
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        tags.add(tag)
    return frozenset(tags)


STUDY_LEVEL_TAGS = _tags(
    # Patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "QualityControlSubject",
    # General Study / Patient Study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "TimezoneOffsetFromUTC",
)

SERIES_LEVEL_TAGS = _tags(
    # General Series
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Laterality",
    "SeriesDate",
    "SeriesTime",
    "PerformingPhysicianName",
    "ProtocolName",
    "SeriesDescription",
    "SeriesDescriptionCodeSequence",
    "OperatorsName",
    "ReferencedPerformedProcedureStepSequence",
    "RelatedSeriesSequence",
    "BodyPartExamined",
    "PatientPosition",
    "RequestAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepDescription",
    # Frame of Reference, General Equipment
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "InstitutionalDepartmentName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
)


def study_level(tag: int) -> bool:
    return tag in STUDY_LEVEL_TAGS or (tag >> 16) == 0x0010


def series_level(tag: int) -> bool:
    return tag in SERIES_LEVEL_TAGS
