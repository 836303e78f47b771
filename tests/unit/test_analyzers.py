"""The analyzers' pure parts: the CT QC measurements, the rules setting, the entry-point loader.

Slice positions follow PS3.3 C.7.6.2.1.1: Image Position (Patient) is the centre of the first
pixel, Image Orientation (Patient) the row and column direction cosines; the slice normal is
their cross product. Hounsfield units are stored values through the Modality LUT's Rescale
Slope and Intercept (PS3.3 C.11.1.1.2).
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import numpy as np
import pytest
from pydicom import Dataset

from nubis.analyzers.contract import Findings, SeriesView, StudyView, Wants
from nubis.analyzers.ct_qc.analyzer import CtSeriesQc
from nubis.analyzers.ct_qc.checks import body_mask, slice_geometry
from nubis.analyzers.job import analyzer_principal
from nubis.analyzers.registry import available, from_entry_points
from nubis.analyzers.rules import Rule, parse_rules
from nubis.config import SettingsError, load_settings
from nubis.security.policy import Action, AuthPolicy, Scope, parse_roles
from nubis.tools import synth


def _slices(zs: list[float], thickness: float = 2.0, tilt: int | None = None) -> list[Dataset]:
    out = []
    for i, z in enumerate(zs):
        ds = Dataset()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0] if i != tilt else [1, 0, 0, 0, 0.9, 0.1]
        ds.ImagePositionPatient = [-100, -100, z]
        ds.SliceThickness = thickness
        out.append(ds)
    return out


def test_even_slices_in_any_order_are_even() -> None:
    geometry = slice_geometry(_slices([6.0, 0.0, 4.0, 2.0, 8.0]))
    assert geometry.even and geometry.nominal_spacing_mm == 2.0
    assert geometry.order == (1, 3, 2, 0, 4)
    assert geometry.thickness_consistent


@pytest.mark.parametrize(
    ("zs", "missing", "uneven", "duplicates"),
    [
        ([0, 2, 4, 10, 12, 14], 2, 0, 0),  # a gap of two slices between 4 and 10
        ([0, 2, 4, 6.5, 8.5, 10.5], 0, 1, 0),  # one step of 2.5 mm among 2 mm ones
        ([0, 2, 4, 4, 6, 8], 0, 0, 1),  # the same position twice
    ],
)
def test_gaps_uneven_steps_and_duplicates_are_counted(
    zs: list[float], missing: int, uneven: int, duplicates: int
) -> None:
    geometry = slice_geometry(_slices([float(z) for z in zs]))
    assert (geometry.missing_slices, geometry.uneven_steps, geometry.duplicate_positions) == (
        missing,
        uneven,
        duplicates,
    )
    assert not geometry.even


def test_a_tilted_slice_and_mixed_thicknesses_are_reported() -> None:
    slices = _slices([0.0, 2.0, 4.0], tilt=1)
    slices[2].SliceThickness = 3.0
    geometry = slice_geometry(slices)
    assert geometry.tilted_slices == 1 and not geometry.even
    assert geometry.thicknesses_mm == (2.0, 3.0) and not geometry.thickness_consistent


def test_the_body_mask_keeps_the_largest_region_only() -> None:
    hu = np.full((20, 20), -1000.0)
    hu[2:12, 2:12] = 40.0  # the body
    hu[15:17, 15:17] = 40.0  # a speck (the table, noise)
    mask = body_mask(hu)
    assert mask.sum() == 100 and mask[5, 5] and not mask[16, 16]


def _study(intercept: float) -> StudyView:
    datasets = list(synth.series_datasets("CT", n_instances=4, rows=32, columns=32, seed=3))
    for ds in datasets:
        ds.RescaleIntercept = intercept
    pixels = [np.frombuffer(ds.PixelData, "<u2").reshape(32, 32) for ds in datasets]
    view = SeriesView(str(datasets[0].SeriesInstanceUID), "CT", tuple(datasets), pixels.__getitem__)
    return StudyView("default", str(datasets[0].StudyInstanceUID), (view,))


def test_a_calibration_off_by_a_hundred_hu_fails_air_and_water() -> None:
    """The phantom's air is stored at 24 (-1000 HU with intercept -1024): with intercept -924
    air reads -900 HU, outside the 50 HU tolerance."""
    good = CtSeriesQc().analyze(_study(-1024)).summary["series"][0]
    assert good["air_ok"] is True and good["water_ok"] is True and good["even"] is True
    off = CtSeriesQc().analyze(_study(-924)).summary["series"][0]
    assert off["air_ok"] is False and abs(off["air_hu"] + 900) < 10
    # Soft tissue now reads 140 HU, outside the water-like window (-100 to 100 HU): no
    # water-like region is found, so no water verdict is given rather than a wrong one.
    assert off["water_hu"] is None and off["water_ok"] is None


def test_rules_parse_conditions_and_refuse_mistakes() -> None:
    (ct, lung) = parse_rules("ct-qc; acme-lung modality=ct body_part=Chest,LUNG concurrency=2")
    assert ct == Rule("ct-qc")
    assert lung.wants == Wants(
        modalities=frozenset({"CT"}), body_parts=frozenset({"CHEST", "LUNG"})
    )
    assert lung.concurrency == 2
    for text, problem in (
        ("CT QC", "lower-case"),
        ("ct-qc; ct-qc", "named twice"),
        ("ct-qc colour=red", "unknown condition"),
        ("ct-qc concurrency=0", ">= 1"),
        ("ct-qc modality", "KEY=VALUE"),
    ):
        with pytest.raises(ValueError, match=problem):
            parse_rules(text)


def test_a_rule_narrows_what_the_analyzer_wants_and_never_widens_it() -> None:
    declared = Wants(modalities=frozenset({"CT", "MR"}), min_instances=3)
    narrowed = declared.narrowed(Wants(modalities=frozenset({"MR", "PT"}), min_instances=2))
    assert narrowed == Wants(modalities=frozenset({"MR"}), min_instances=3)
    assert narrowed.takes_modalities(["MR", "SR"]) and not narrowed.takes_modalities(["CT"])
    assert not narrowed.takes_series("MR", "", {"1.2"}, 2)


class Good:
    name = "good"
    version = "1"
    wants = Wants()

    def analyze(self, study: StudyView) -> Findings:
        return Findings()


def test_the_loader_keeps_good_plugins_and_logs_broken_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    here = __name__
    points = [
        EntryPoint("good", f"{here}:Good", "nubis.analyzers"),
        EntryPoint("renamed", f"{here}:Good", "nubis.analyzers"),  # its name is "good"
        EntryPoint("missing", f"{here}:Nowhere", "nubis.analyzers"),
        EntryPoint("not-one", f"{here}:Dataset", "nubis.analyzers"),
    ]
    with caplog.at_level(logging.ERROR, "nubis.analyzers.registry"):
        found = from_entry_points(points)
    assert list(found) == ["good"]
    assert len(caplog.records) == 3
    both = available(points[:1])
    assert set(both) == {"good", "ct-qc"} and isinstance(both["ct-qc"], CtSeriesQc)
    assert set(available(points[:1], only=["good"])) == {"good"}


def test_a_wrong_analyzers_setting_stops_the_archive_from_starting() -> None:
    with pytest.raises(SettingsError, match="analyzers: 'CT'"):
        load_settings(environ={}, overrides={"analyzers": "CT QC"})
    assert load_settings(environ={}, overrides={"analyzers": "ct-qc"}).analyzers == "ct-qc"


def test_the_analyzer_role_reads_and_stores_only_and_is_never_a_users() -> None:
    policy = AuthPolicy()
    who = analyzer_principal("ct-qc", "tenant-a")
    read = policy.decide(who, Action.READ | Action.DOWNLOAD)
    assert read.allowed and read.scope == Scope("tenant-a")  # no grants, no quarantine
    assert policy.decide(who, Action.WRITE).allowed
    for refused in (Action.DELETE, Action.EXPORT, Action.SHARE, Action.ADMIN, Action.OPERATE):
        assert not policy.decide(who, refused).allowed
    with pytest.raises(ValueError, match="unknown role"):
        parse_roles("analyzer")
