"""The analyzer plug-in contract: what an analyzer declares, what it sees, what it returns.

An analyzer is an object with a ``name``, a ``version``, the series it :class:`Wants`, and an
``analyze(study)`` method. It is handed a :class:`StudyView` of the series it wants, read
before it is called through the services as the principal ``analyzer:<name>`` (authorized by
the Guard, recorded as DICOM Instances Transferred): it holds data sets and decoded pixels,
never a service, a blob store or the index, so an analyzer cannot write or read anything else.
It returns :class:`Findings`: DICOM objects (a Structured Report, a Segmentation...) that the
``analyze`` job stores in the same study through the store service, and a short summary (no
patient data: it is kept in the index and shown by ``nubis jobs list``).

Analyzers are found by nubis.analyzers.registry: the built-ins and the entry point group
``nubis.analyzers`` of installed distributions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydicom import Dataset

__all__ = [
    "Analyzer",
    "AnalyzerError",
    "Findings",
    "SeriesView",
    "StudyView",
    "Wants",
]


class AnalyzerError(Exception):
    """An analyzer cannot analyze this study (bad input, not a failure worth retrying): the
    run is recorded as failed with ``reason``, without further attempts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Wants:
    """The series an analyzer is given: every non-empty field must match (empty: any).

    ``modalities`` (0008,0060), ``body_parts`` (0018,0015, upper case), ``sop_classes``
    (0008,0016); ``min_instances`` per series. A study none of whose series match is not
    handed to the analyzer at all (its run is recorded as skipped).
    """

    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()
    min_instances: int = 1

    def narrowed(self, other: Wants) -> Wants:
        """What both ``self`` and ``other`` want (a rule narrows what an analyzer declares)."""

        def both(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
            return a & b if a and b else a or b

        return Wants(
            both(self.modalities, other.modalities),
            both(self.body_parts, other.body_parts),
            both(self.sop_classes, other.sop_classes),
            max(self.min_instances, other.min_instances),
        )

    def takes_modalities(self, modalities: Sequence[str]) -> bool:
        """Whether a study of ``modalities`` may hold a wanted series (the scan's cheap test,
        on the index's ModalitiesInStudy)."""
        return not self.modalities or bool(self.modalities & set(modalities))

    def takes_series(
        self, modality: str, body_part: str, sop_classes: set[str], count: int
    ) -> bool:
        return (
            (not self.modalities or modality in self.modalities)
            and (not self.body_parts or body_part.upper() in self.body_parts)
            and (not self.sop_classes or sop_classes <= self.sop_classes)
            and count >= self.min_instances
        )


@dataclass(frozen=True)
class SeriesView:
    """One series as an analyzer sees it: its instances' data sets (Pixel Data left out) in
    the order stored, and their pixels on demand, decoded by nubis' own read path."""

    series_uid: str
    modality: str
    datasets: tuple[Dataset, ...]
    _pixels: Callable[[int], np.ndarray] = field(repr=False)

    def pixels(self, i: int) -> np.ndarray:
        """The stored pixel values of instance ``i``'s first frame (rows x columns, x samples
        for colour), before any Modality LUT: apply Rescale Slope and Intercept to get
        Hounsfield units."""
        return self._pixels(i)


@dataclass(frozen=True)
class StudyView:
    """The wanted series of one study, read-only."""

    partition: str
    study_uid: str
    series: tuple[SeriesView, ...]


@dataclass(frozen=True)
class Findings:
    """What an analysis produced: objects to store in the study, and a summary."""

    objects: tuple[Dataset, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Analyzer(Protocol):
    """The plug-in interface (entry point group ``nubis.analyzers``: a class or factory
    returning one of these)."""

    name: str
    version: str
    wants: Wants

    def analyze(self, study: StudyView) -> Findings: ...
