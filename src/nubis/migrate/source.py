"""What a migration source is: studies, their instances, and the objects' bytes.

Every source (:mod:`~nubis.migrate.media`, :mod:`~nubis.migrate.dicomweb`,
:mod:`~nubis.migrate.dimse`) implements :class:`Source`. The job asks for the studies, then
for each study its instances, then for the bytes of those the archive lacks, which the source
hands to ``deliver`` one object at a time as a spooled PS3.10 file. A source keeps nothing of
a study once its fetch has returned, so its memory does not grow with the migration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from nubis.services.spool import SpooledFile
from nubis.services.store import StoreOutcome

__all__ = [
    "Deliver",
    "ListingGap",
    "Source",
    "SourceError",
    "SourceInstance",
    "SourceStudy",
]


class SourceError(RuntimeError):
    """The source could not be reached or answered with a failure; the message says which."""


@dataclass(frozen=True)
class SourceStudy:
    """A study as the source lists it; ``instances`` is its count there, when it says."""

    study_uid: str
    study_date: str | None = None
    instances: int | None = None


@dataclass(frozen=True)
class SourceInstance:
    """One object of a study at the source; ``ref`` is where the source finds its bytes."""

    sop_instance_uid: str
    series_uid: str | None = None
    ref: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ListingGap:
    """Part of the source that could not be listed whole (e.g. a C-FIND still capped on a
    one-minute window): reported, so nothing it hides goes missing silently."""

    what: str
    reason: str


# Stores one received object; the source learns the outcome (e.g. for a C-STORE status).
Deliver = Callable[[SpooledFile], StoreOutcome]


class Source(Protocol):
    """A legacy archive, a folder or a medium that a migration reads."""

    description: str
    # True where the bytes delivered are the source's own object (files, WADO-RS), so their
    # SHA-256 is the source's; False where they are re-encoded on the way (DIMSE).
    gives_bytes: bool
    gaps: list[ListingGap]

    def studies(self) -> Iterator[SourceStudy]:
        """Every study of the source (within the migration's date range)."""
        ...

    def instances(self, study: SourceStudy) -> list[SourceInstance]:
        """The instances of ``study`` at the source."""
        ...

    def fetch(
        self, study: SourceStudy, wanted: list[SourceInstance], deliver: Deliver
    ) -> dict[str, str]:
        """Deliver the objects ``wanted`` of ``study`` (all of them when it is every instance
        of the study); what is not delivered is reported missing by the job, with the reason
        returned here by SOP Instance UID, as far as the source knows."""
        ...

    def close(self) -> None: ...
