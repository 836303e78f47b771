"""Retention (issue 13): rules that expire studies, the ``retention`` job that applies them,
and the signed certificates every erasure leaves (docs/retention.md)."""
