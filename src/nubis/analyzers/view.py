"""A study as an analyzer sees it, read through the retrieve service.

One ``RetrieveService.instances`` call authorizes the whole read for the analyzer's principal
and records it (DICOM Instances Transferred); each object is then read as any whole-object
retrieval is (digest checked, a correction's overlay applied), and pixels are decoded by the
same frame decoder WADO-RS uses (``RetrieveService.decoded_frames``).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from pydicom import Dataset, dcmread

from nubis.analyzers.contract import SeriesView, StudyView, Wants
from nubis.model.records import StoredInstance
from nubis.security.policy import Principal
from nubis.services.retrieve import AS_STORED, RetrieveService

__all__ = ["read_study"]


def read_study(
    retrieve: RetrieveService, who: Principal, study_uid: str, wants: Wants
) -> StudyView:
    """The series of ``study_uid`` that ``wants`` takes; NotFound or Forbidden as any read."""
    found = retrieve.instances(who, study_uid)
    by_series: dict[str, list[StoredInstance]] = defaultdict(list)
    for inst in found:
        # The SOP class is in the index: objects of other classes are never read.
        if not wants.sop_classes or inst.sop_class_uid in wants.sop_classes:
            by_series[inst.series_uid].append(inst)
    views = []
    for series_uid, members in by_series.items():
        heads = [_header(retrieve, inst) for inst in members]
        first = heads[0]
        if not wants.takes_series(
            str(first.get("Modality", "")),
            str(first.get("BodyPartExamined", "")),
            {inst.sop_class_uid for inst in members},
            len(members),
        ):
            continue
        views.append(
            SeriesView(
                series_uid,
                str(first.get("Modality", "")),
                tuple(heads),
                _pixels(retrieve, members, heads),
            )
        )
    return StudyView(found[0].partition, study_uid, tuple(views))


def _header(retrieve: RetrieveService, inst: StoredInstance) -> Dataset:
    return dcmread(io.BytesIO(retrieve.instance_bytes(inst, AS_STORED)), stop_before_pixels=True)


def _pixels(
    retrieve: RetrieveService, members: list[StoredInstance], heads: list[Dataset]
) -> Callable[[int], np.ndarray]:
    def pixels(i: int) -> np.ndarray:
        ds = heads[i]
        raw = b"".join(b"".join(part) for part in retrieve.decoded_frames(members[i], [1]))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        dtype = {8: "i1" if signed else "u1", 16: "<i2" if signed else "<u2"}.get(
            int(ds.BitsAllocated), "<i4" if signed else "<u4"
        )
        shape = (int(ds.Rows), int(ds.Columns))
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        # Colour frames come decoded colour-by-pixel (nubis.dicom.frame_codec).
        return np.frombuffer(raw, dtype=dtype).reshape(shape if samples == 1 else (*shape, samples))

    return pixels
