"""Asynchronous replication to another nubis over DICOMweb (issue 13): the replica as a target
(target), and the ``replicate`` job that drains the outbox the index writes with each change
(job; the outbox's SQL is nubis.index.outbox_sql). docs/replication.md."""
