"""KEK retirement: make nothing need an old key-encryption key, or say what still does.

A blob's DEK is wrapped under HKDF(KEK || patient key) with the KEK its header names
(nubis.crypto.patient_keys), so a KEK is needed by

1. the patient keys it wraps: the key provider re-wraps them under the current KEK
   (``KeyProvider.retire``), after which they no longer need it;
2. every stored object whose header names it: the ``rewrap`` job (nubis.services.kek_rewrap,
   ``nubis keys retire KEK --rewrap``) writes each one anew under a fresh DEK wrapped by the
   current KEK and swaps it in (blob stores are write-once). It cannot do objects awaiting a
   restore from an archive tier, nor objects whose patient key was shredded: those keep it.

:func:`retire_kek` does the first and counts the second by reading each indexed object's header
(one ranged read of 1 KiB per object, nothing decrypted), so ``nubis keys retire`` removes a KEK
only when nothing needs it. Objects whose header cannot be read (blob missing, in an archive
tier awaiting restore, store down) count as needing it: removing a KEK cannot be undone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.errors import NubisError
from nubis.index.database import Index
from nubis.index.schema import instances, series, studies
from nubis.ports.blobs import BlobContext, BlobNotFound
from nubis.ports.keys import KeyProvider

__all__ = ["RetirementCheck", "retire_kek"]

log = logging.getLogger(__name__)

_PAGE = 500


@dataclass(frozen=True)
class RetirementCheck:
    """What a retirement did and what still needs the KEK."""

    kek_id: str
    rewrapped: int  # patient keys re-wrapped under the current KEK now
    patient_keys: int  # patient keys still wrapped by it (0 unless one raced the retirement)
    objects: int  # indexed objects whose header names it
    unchecked: int  # indexed objects whose header could not be read

    @property
    def needed(self) -> bool:
        return bool(self.patient_keys or self.objects or self.unchecked)


def retire_kek(
    index: Index, blobs: EncryptedBlobStore, keys: KeyProvider, kek_id: str, *, workers: int = 8
) -> RetirementCheck:
    """Re-wrap the patient keys ``kek_id`` wraps, then find what still needs it."""
    rewrapped = keys.retire(kek_id)
    naming = unchecked = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="nubis-retire") as pool:
        for page in _pages(index):
            for named in pool.map(lambda item: _names(blobs, kek_id, *item), page):
                naming += named is True
                unchecked += named is None
    return RetirementCheck(kek_id, rewrapped, keys.wrapped_by(kek_id), naming, unchecked)


def _pages(index: Index) -> Iterator[list[tuple[str, BlobContext]]]:
    """Every indexed object's blob key and identity, a page at a time, in id order."""
    columns = (
        instances.c.blob_key,
        instances.c.partition,
        studies.c.study_uid,
        series.c.series_uid,
        instances.c.sop_instance_uid,
        instances.c.sha256,
    )
    for rows in index.walk_instances(columns, page=_PAGE):
        yield [(key, BlobContext(*identity)) for _, key, *identity in rows]


def _names(blobs: EncryptedBlobStore, kek_id: str, key: str, context: BlobContext) -> bool | None:
    """Whether the blob's header names ``kek_id``; None if it could not be read."""
    try:
        wrapped = blobs.wrapped_key(key, context=context)
    except (BlobNotFound, NubisError, OSError) as exc:
        log.warning("retirement: the header of blob %s could not be read: %s", key, exc)
        return None
    return wrapped is not None and wrapped.key_id == kek_id
