"""AI analyzers (issue 15): plug-ins that analyze new studies and store their results as DICOM.

contract (what an analyzer declares, sees and returns), registry (built-ins and the entry
point group ``nubis.analyzers``), rules (the ``analyzers`` setting), job (the
``analyze-scan`` and ``analyze`` job kinds), view (a study read through the retrieve service
for an analyzer), ct_qc/ (the built-in CT series QC). docs/analyzers.md.
"""
