"""Is a stored object still what was stored: its bytes against the size and SHA-256 that the
index recorded at ingest.

The one check of every reader that makes it: whole objects served (nubis.services.retrieve:
WADO-RS, C-MOVE, C-GET, the web face's send and ZIP downloads), storage commitment
(nubis.dimse.commitment) and the verify job (nubis.jobs.verify). Whether a reader checks is
its own decision (``verify_reads``, an encrypted store's authenticated reads); how, is this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from nubis.errors import BlobCorrupted

__all__ = ["verified_chunks", "verify_chunks"]


def verified_chunks(chunks: Iterable[bytes], size: int, sha256: str) -> Iterator[bytes]:
    """``chunks`` passed on as they come, checked against ``size`` and ``sha256``.

    The digest is known only at the end, so the chunk that completes the object is held back
    until it matches: a mismatch (or a chunk that runs past ``size``) raises
    :class:`~nubis.errors.BlobCorrupted` in its place, and fewer bytes than ``size`` raise it
    at the end. A reader that sends each chunk on therefore never sends a bad object's last
    byte: its client sees a broken stream, never wrong bytes that look complete.
    """
    digest = hashlib.sha256()
    read = 0
    for chunk in chunks:
        read += len(chunk)
        if read > size:
            raise BlobCorrupted("stored object failed its integrity check")
        digest.update(chunk)
        if read == size and digest.hexdigest() != sha256:
            raise BlobCorrupted("stored object failed its integrity check")
        yield chunk
    if read != size or digest.hexdigest() != sha256:
        raise BlobCorrupted("stored object failed its integrity check")


def verify_chunks(chunks: Iterable[bytes], size: int, sha256: str) -> None:
    """Read ``chunks`` to the end; :class:`~nubis.errors.BlobCorrupted` unless they are the
    object recorded with ``size`` and ``sha256``."""
    for _ in verified_chunks(chunks, size, sha256):
        pass
