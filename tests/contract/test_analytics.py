"""Analytics on every index backend (SQLite, PostgreSQL): the values read from the stored DICOM
JSON in SQL (nubis.index.analytics_sql) are the objects' own, in aggregates and in the Parquet
export alike. Real objects: pydicom's CT_small.dcm and MR_small.dcm."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
import sqlalchemy as sa
from pydicom.data import get_testdata_file

from nubis.blobs.filesystem import FileBlobStore
from nubis.index.analytics_sql import json_value
from nubis.index.database import Index
from nubis.index.schema import series
from nubis.model.aggregates import KVP_EDGES, SLICE_THICKNESS_EDGES, bin_label
from nubis.security.policy import AuthPolicy, Principal, system_principal
from nubis.services.aggregates import AggregateService
from nubis.services.guard import Guard
from nubis.services.metadata_export import MetadataExport
from nubis.services.spool import Spool
from nubis.services.store import StoreService

FILES = ("CT_small.dcm", "MR_small.dcm")
RESEARCHER = Principal("rita", "p", frozenset({"researcher"}))


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        postgres = request.getfixturevalue("postgres")
        url = str(postgres.database(f"analytics_{abs(hash(request.node.nodeid)):x}"))
    idx = Index(url)
    idx.migrate()
    idx.open()
    guard = Guard(AuthPolicy(), audit=None)
    store = StoreService(
        idx, FileBlobStore(tmp_path / "blobs"), guard=guard, overwrite=False, bulk_threshold=1024
    )
    spool = Spool(tmp_path / "spool")
    for name in FILES:
        path = Path(get_testdata_file(name))
        assert store.store(spool.from_file(path), principal=system_principal(tenant="p")).ok
    yield idx
    idx.close()


def _datasets() -> list[pydicom.Dataset]:
    return [pydicom.dcmread(get_testdata_file(n), stop_before_pixels=True) for n in FILES]


def test_aggregates_read_the_objects_own_values(index: Index) -> None:
    service = AggregateService(index, Guard(AuthPolicy(), audit=None), min_cell=1)

    def cells(kind: str, *params: tuple[str, str]) -> dict[tuple[str, ...], object]:
        answer = service.answer(RESEARCHER, kind, list(params))
        return {tuple(c["key"]): c["count"] for c in answer["cells"]}

    ct, mr = _datasets()
    assert cells("slice_thickness_histogram", ("Modality", "CT")) == {
        (bin_label(float(ct.SliceThickness), SLICE_THICKNESS_EDGES),): 1
    }
    assert cells("kvp_histogram", ("Modality", "CT")) == {(bin_label(float(ct.KVP), KVP_EDGES),): 1}
    assert cells("series_by_manufacturer") == {
        (str(ds.Manufacturer), str(ds.get("ManufacturerModelName", "")) or "unknown"): 1
        for ds in (ct, mr)
    }
    assert cells("studies_by_modality_year", ("ModalitiesInStudy", "MR")) == {
        ("MR", str(mr.StudyDate)[:4]): 1
    }


def test_the_parquet_export_reads_the_same_values(index: Index, tmp_path: Path) -> None:
    exporter = MetadataExport(index, Guard(AuthPolicy(), audit=None), default_tier="hot")
    exporter.parquet(system_principal(tenant="p"), tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "instances.parquet").to_pylist()
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for ds in _datasets():
        row = by_uid[str(ds.SOPInstanceUID)]
        assert row["slice_thickness"] == float(ds.SliceThickness)
        assert row["kvp"] == (float(ds.KVP) if "KVP" in ds else None)
        assert row["modality"] == ds.Modality
    series_rows = pq.read_table(tmp_path / "out" / "series.parquet").to_pylist()
    assert {r["manufacturer"] for r in series_rows} == {str(ds.Manufacturer) for ds in _datasets()}


def test_each_tag_compiles_its_own_statement(index: Index) -> None:
    """Two values of one column differ only by tag: the statement cache must tell them apart
    (unlabelled, so that nothing else in the statements does)."""
    ct, mr = _datasets()
    read = {}
    for tag in ("00080070", "00081090"):  # Manufacturer, Manufacturer's Model Name
        with index.reading() as conn:
            stmt = sa.select(json_value(series.c.attrs, tag)).order_by(series.c.id)
            read[tag] = [v for (v,) in conn.execute(stmt)]
    assert read["00080070"] == [str(ct.Manufacturer), str(mr.Manufacturer)]
    assert read["00081090"] == [str(ct.ManufacturerModelName), str(mr.ManufacturerModelName)]
