"""Encryption at rest: the blob envelope format and key providers (see nubis.blobs.encrypted)."""
