"""Which attributes identify a patient: their values never appear in a log line or an error
reason, whatever the level (docs/security.md, "Patient data in logs").

The list is the patient- and study-level attributes of PS3.15 Table E.1-1 (Application Level
Confidentiality Profile), with the series-level ones of that table the archive matches on or
keeps per series (descriptions, dates, procedure step IDs, institution and staff names), and,
to be safe with attributes added to the standard later, every attribute of group 0010 (the
Patient and Patient Study modules put patient data there).

UIDs are left out on purpose, although Table E.1-1 replaces them when de-identifying: they are
the archive's own handles in URLs, logs and audit records, a UID built as PS3.5 9 says carries
no patient data, and an operator cannot trace a failed store without its SOP Instance UID. The
non-conformant values of hexadecimal digits and dots an object may be stored under are its
handles too (nubis.dicom.uids). A value offered *as* a UID that is neither is never echoed,
since it may be anything (nubis.model.query, nubis.dicom.inspect).

Error reasons built from such a value name the attribute and the problem instead: "PatientName:
the value has several values", not the name itself. That holds for reasons sent to the client
too: the value is the client's own, but a reason is also logged, and it may be read by someone
else (a proxy's log, a support ticket).
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword

_PATIENT_GROUP = 0x0010

_KEYWORDS = (
    # Patient (PS3.3 C.7.1.1), Patient Study (C.7.2.2), Patient Medical (C.7.1.3)
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "PatientMotherBirthName",
    "MilitaryRank",
    "BranchOfService",
    "MedicalRecordLocator",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientComments",
    "PatientReligiousPreference",
    "CountryOfResidence",
    "RegionOfResidence",
    "PatientInsurancePlanCodeSequence",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "MedicalAlerts",
    "Allergies",
    "SmokingStatus",
    "PregnancyStatus",
    "LastMenstrualDate",
    "PatientState",
    "SpecialNeeds",
    # General Study (C.7.2.1), Patient Study, visit and request attributes
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyDescription",
    "StudyComments",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "RequestingPhysician",
    "RequestingService",
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "AdmittingDate",
    "AdmittingTime",
    "CurrentPatientLocation",
    "PatientInstitutionResidence",
    "ServiceEpisodeID",
    "ServiceEpisodeDescription",
    "VisitComments",
    "ReasonForStudy",
    "RequestedProcedureDescription",
    "RequestedProcedureID",
    "ReasonForTheRequestedProcedure",
    # Series-level attributes of Table E.1-1 that the index matches on or keeps
    "RequestAttributesSequence",
    "ScheduledProcedureStepID",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDescription",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
)


def _tags(keywords: tuple[str, ...]) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        tags.add(tag)
    return frozenset(tags)


IDENTIFYING_TAGS: frozenset[int] = _tags(_KEYWORDS)


def is_identifying(*path: int) -> bool:
    """Whether a value at this attribute path (a tag, or a sequence's tag and an item's)
    may identify a patient: then no log line or error reason may carry it."""
    return any(tag in IDENTIFYING_TAGS or tag >> 16 == _PATIENT_GROUP for tag in path)


__all__ = ["IDENTIFYING_TAGS", "is_identifying"]
