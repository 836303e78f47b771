"""Migration from legacy archives: sources (DIMSE, DICOMweb, media), the job, the report.

A source lists studies and their instances and delivers each object's bytes; the job
(:mod:`nubis.migrate.job`) stores them through the one store path of ``services/`` as the
migration's own principal and keeps a ledger (:mod:`nubis.migrate.ledger`) of what each source
instance became, from which :mod:`nubis.migrate.report` reconciles source and archive.
"""
