"""The hybrid edge node (issue 13, docs/edge.md): store here first, forward to the cloud
archive, evict what the cloud confirmed, read evicted objects back through the cloud.

One cloud ``nubis serve`` on loopback (an ordinary archive; the edge forwards with its
bootstrap admin key) and the edge in-process (encrypted at rest, the default), its
``replicate`` and ``edge-evict`` jobs run by the test, its DICOMweb front door through
Starlette's TestClient. The tests share both, in order. What is compared is what WADO-RS
serves as stored (PS3.18 10.4.1, ``transfer-syntax=*``), byte for byte.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select, update
from starlette.testclient import TestClient
from typer.testing import CliRunner

from integration import ADMIN_TOKEN, AUTH
from integration.dimse_helpers import free_port, need_dcmtk, run
from integration.server import ACCEPT_AS_STORED, Server, parse_multipart, start_server
from nubis.archive import Archive
from nubis.cli.main import app
from nubis.config import load_settings
from nubis.dimse.server import DimseServer
from nubis.edge.cloud import CloudUnavailable
from nubis.errors import NubisError
from nubis.index import edge_sql
from nubis.index.schema import edge_copies, replication_outbox, studies
from nubis.jobs.schedule import EDGE_EVICT, REPLICATE
from nubis.jobs.store import JobState
from nubis.security.authn import cli_principal
from nubis.tools.synth import dataset_bytes, series_datasets
from nubis.web.app import create_app

UPDATE = "U"
INSTANCES_ACCESSED = "110103"
_DAY_MS = 86400 * 1000


@dataclass
class Edge:
    archive: Archive
    http: TestClient
    cloud: Server
    sent: dict[str, bytes]  # SOP Instance UID -> the bytes the modality sent
    studies: dict[str, tuple[str, str, list[str]]]  # name -> study, series, SOP UIDs


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    root = tmp_path_factory.mktemp("edge")
    cloud = start_server(root / "cloud", env={"NUBIS_WORKERS": "1"})
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(root / "edge"),
            "durable": "false",
            "auth": "false",
            "jobs": "false",  # the test runs the edge's jobs itself
            "forward_to": cloud.dicomweb,
            "forward_api_key": ADMIN_TOKEN,
            "replicate_retry_max_seconds": "1",
            "dimse_port": str(free_port()),
        },
    )
    archive = Archive(settings)
    archive.replicator.linger_seconds = 0.3  # a run ends once the outbox is empty
    dimse = DimseServer(archive)
    try:
        with TestClient(create_app(archive)) as http:
            dimse.start()
            found = Edge(archive, http, cloud, {}, {})
            yield found
            cloud = found.cloud  # restarted by a test
    finally:
        dimse.stop()
        cloud.stop()


def _store(edge: Edge, name: str, count: int, seed: int) -> None:
    """A modality's study of ``count`` CT objects, stored at the edge (acknowledged on local
    durability, whatever the cloud's state)."""
    uids: list[str] = []
    study = series = ""
    for ds in series_datasets("CT", n_instances=count, rows=32, columns=32, seed=seed):
        source = edge.archive.settings.spool_dir.parent / f"{ds.SOPInstanceUID}.dcm"
        source.write_bytes(dataset_bytes(ds))
        edge.sent[str(ds.SOPInstanceUID)] = source.read_bytes()
        outcome = edge.archive.store.store(
            edge.archive.spool.from_file(source), principal=cli_principal()
        )
        assert outcome.ok, outcome.error
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        uids.append(str(ds.SOPInstanceUID))
    edge.studies[name] = (study, series, uids)


def _run(edge: Edge, kind: str) -> dict[str, Any]:
    """Run a job of ``kind`` on the edge's own job runner, now; its result."""
    job_id = edge.archive.jobs.enqueue(kind)
    assert job_id is not None
    assert edge.archive.new_job_runner(scheduled=False).run_once()
    job = edge.archive.jobs.get(job_id)
    assert job is not None and job.state is JobState.DONE and job.result is not None, job
    return job.result


def _outbox(edge: Edge) -> int:
    with edge.archive.index.reading() as conn:
        return int(conn.execute(select(func.count()).select_from(replication_outbox)).scalar())


def _evicted(edge: Edge) -> int:
    with edge.archive.index.reading() as conn:
        return int(
            conn.execute(
                select(func.count()).where(edge_copies.c.evicted_at.is_not(None))
            ).scalar_one()
        )


def _age(edge: Edge, name: str, days: int) -> None:
    """Make study ``name`` last changed ``days`` ago (the keep rule's clock)."""
    study = edge.studies[name][0]
    edge.archive.index.write(
        lambda conn: conn.execute(
            update(studies)
            .where(studies.c.study_uid == study)
            .values(updated_at=int(time.time() * 1000) - days * _DAY_MS)
        )
    )


def _from_cloud(cloud: Server, study: str, series: str, sop: str) -> bytes | None:
    answer = httpx.get(
        f"{cloud.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
        headers={**AUTH, "Accept": ACCEPT_AS_STORED},
        timeout=30,
    )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    [part] = parse_multipart(answer.content, answer.headers["content-type"])
    return part


def _from_edge(edge: Edge, study: str, series: str, sop: str) -> httpx.Response:
    return edge.http.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": ACCEPT_AS_STORED},
    )


def _c_get(edge: Edge, name: str, into: Path) -> tuple[int, list[Dataset]]:
    """C-GET (PS3.4 C.4.3) of study ``name`` by dcmtk's getscu from the edge's DIMSE port,
    the objects coming back on the same association: (final status, what it received)."""
    need_dcmtk("getscu")
    into.mkdir()
    get = run(["getscu", "-S", "-d", "-aet", "VIEWER", "-aec", "NUBIS", "-od", str(into),
               "127.0.0.1", str(edge.archive.settings.dimse_port),
               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={edge.studies[name][0]}"],
              check=False)  # fmt: skip
    out = get.stdout + get.stderr
    response = out[out.rindex("Received C-GET Response") :]
    match = re.search(r"DIMSE Status\s*:\s*0x([0-9a-f]{4})", response, re.IGNORECASE)
    assert match, response[:2000]
    return int(match.group(1), 16), [dcmread(p) for p in sorted(into.iterdir())]


def _blob_files(edge: Edge, name: str) -> list[Path]:
    study = edge.studies[name][0]
    found = edge.archive.retrieve.instances(cli_principal(), study)
    root = edge.archive.settings.data_dir / "blobs"
    return [root / i.blob_key[:2] / i.blob_key[2:4] / i.blob_key for i in found]


def test_stores_land_at_the_edge_and_are_forwarded_verified(edge: Edge) -> None:
    _store(edge, "old", 3, seed=61)
    assert _outbox(edge) == 3
    result = _run(edge, REPLICATE)
    assert result["applied"] == 3, result
    assert _outbox(edge) == 0
    study, series, sops = edge.studies["old"]
    for sop in sops:
        assert _from_cloud(edge.cloud, study, series, sop) == edge.sent[sop]
    with edge.archive.index.reading() as conn:
        [local] = edge_sql.local_studies(conn)
    # Every instance confirmed with the digest it has: evictable once the rules let it go.
    assert (local.unconfirmed, local.pending, local.local_instances) == (0, False, 3)


def test_recent_studies_stay_local(edge: Edge) -> None:
    assert edge.archive.evictor.keep_days == 30  # the default rule
    result = _run(edge, EDGE_EVICT)
    assert result.get("studies_evicted", 0) == 0, result
    assert all(p.exists() for p in _blob_files(edge, "old"))


def test_with_the_cloud_down_stores_go_on_and_only_confirmed_studies_are_evicted(
    edge: Edge,
) -> None:
    edge.cloud.stop()
    _store(edge, "pending", 2, seed=62)  # acknowledged: the cloud plays no part in a store
    result = _run(edge, REPLICATE)
    assert result["applied"] == 0 and result["unreachable"] >= 1, result
    with edge.archive.index.reading() as conn:
        errors = conn.execute(select(replication_outbox.c.last_error)).scalars().all()
    assert len(errors) == 2 and all("cannot be reached" in (e or "") for e in errors)
    # Both studies are past the keep rule; only the one the cloud confirmed goes.
    _age(edge, "old", 31)
    _age(edge, "pending", 31)
    result = _run(edge, EDGE_EVICT)
    assert result["studies_evicted"] == 1 and result["instances_evicted"] == 3, result
    assert result["kept_unconfirmed"] == 1, result
    assert not any(p.exists() for p in _blob_files(edge, "old"))
    assert all(p.exists() for p in _blob_files(edge, "pending"))
    assert _evicted(edge) == 3
    # A correction of an evicted study is refused (409, RFC 9110 15.5.10): the cloud would
    # serve it under an overlay the edge cannot check by digest. It is the cloud's to correct.
    refused = edge.http.post(
        "/corrections",
        json={"action": "update-study", "study": edge.studies["old"][0],
              "set": {"StudyDescription": "CT HEAD"}, "reason": "typo"},
    )  # fmt: skip
    assert refused.status_code == 409, refused.text
    assert "evicted from this edge node" in refused.json()["reason"]
    assert _outbox(edge) == 2  # nothing queued for the cloud
    # The verify job checks what is here; the evicted objects are the cloud's to check.
    checked = _run(edge, "verify")
    assert (checked["checked"], checked.get("missing", 0)) == (2, 0), checked
    # The index keeps the evicted study: searches and metadata answer from here.
    study = edge.studies["old"][0]
    assert edge.http.get(f"/dicom-web/studies/{study}/metadata").status_code == 200
    # Audited: DICOM Instances Accessed, action Update (PS3.15 A.5.3.3), naming the study.
    records = [
        r.event_dict
        for r in edge.archive.audit.scan(limit=100000)
        if "evicted from this edge node" in (r.event_dict.get("outcome_description") or "")
    ]
    assert len(records) == 1
    assert records[0]["event_id"]["code"] == INSTANCES_ACCESSED
    assert records[0]["action"] == UPDATE
    assert study in str(records[0])


def test_an_evicted_read_with_the_cloud_down_is_503_with_retry_after(
    edge: Edge, tmp_path: Path
) -> None:
    study, series, sops = edge.studies["old"]
    answer = _from_edge(edge, study, series, sops[0])
    # RFC 9110 15.6.4 and 10.2.3: the archive cannot serve it now, retry after this long.
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "30"
    assert "cloud archive" in answer.json()["reason"]
    frames = edge.http.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sops[0]}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert frames.status_code == 503, frames.text
    # C-GET (and C-MOVE) count each sub-operation failed; all failed ends 0xA702 Refused:
    # Out of Resources - Unable to perform sub-operations (PS3.4 C.4.3.1.4, C.4.2.1.5), the
    # status the error carries too.
    status, received = _c_get(edge, "old", tmp_path / "down")
    assert (status, received) == (0xA702, [])
    [inst] = edge.archive.retrieve.instances(cli_principal(), study, series, sops[0])
    with pytest.raises(NubisError) as raised:
        edge.archive.retrieve.instance_bytes(inst, "*")
    assert isinstance(raised.value, CloudUnavailable) and raised.value.dimse_status == 0xA702
    # A local study reads as ever.
    p_study, p_series, p_sops = edge.studies["pending"]
    local = _from_edge(edge, p_study, p_series, p_sops[0])
    assert local.status_code == 200
    [part] = parse_multipart(local.content, local.headers["content-type"])
    assert part == edge.sent[p_sops[0]]


def test_the_edge_catches_up_and_reads_evicted_objects_through_the_cloud(
    edge: Edge, tmp_path: Path
) -> None:
    edge.cloud = start_server(edge.cloud.data_dir, env=edge.cloud.env, port=edge.cloud.port)
    result = _run(edge, REPLICATE)
    assert result["applied"] == 2 and _outbox(edge) == 0, result
    p_study, p_series, p_sops = edge.studies["pending"]
    for sop in p_sops:
        assert _from_cloud(edge.cloud, p_study, p_series, sop) == edge.sent[sop]
    study, series, sops = edge.studies["old"]
    took: list[float] = []
    for sop in sops:
        start = time.perf_counter()
        answer = _from_edge(edge, study, series, sop)
        took.append(time.perf_counter() - start)
        assert answer.status_code == 200, answer.text
        [part] = parse_multipart(answer.content, answer.headers["content-type"])
        assert part == edge.sent[sop]
    start = time.perf_counter()
    assert _from_edge(edge, p_study, p_series, p_sops[0]).status_code == 200
    local = time.perf_counter() - start
    print(f"evicted read {min(took) * 1000:.1f} ms (min of 3) vs local {local * 1000:.1f} ms")
    # C-GET reads through the cloud too: the same objects, as the modality sent them.
    status, received = _c_get(edge, "old", tmp_path / "up")
    assert status == 0x0000
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(sops)
    for ds in received:
        sent = dcmread(BytesIO(edge.sent[str(ds.SOPInstanceUID)]))
        assert ds.PixelData == sent.PixelData
    # Now confirmed, the once-pending study goes at the next run; nothing else is left.
    result = _run(edge, EDGE_EVICT)
    assert result["studies_evicted"] == 1 and result["instances_evicted"] == 2, result
    assert _evicted(edge) == 5
    # `nubis replication status` on an edge: what is here and what only the cloud holds.
    shown = CliRunner().invoke(
        app,
        ["replication", "status", "--json", "--data-dir", str(edge.archive.settings.data_dir),
         "--set", f"forward_to={edge.cloud.dicomweb}"],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert (report["edge_local_instances"], report["edge_evicted_instances"]) == (0, 5), report
    assert report["edge_evicted_bytes"] == sum(len(edge.sent[s]) for s in sops + p_sops)
    assert report["backlog"] == 0 and report["replica"] == edge.cloud.dicomweb


def test_a_study_that_changed_since_it_was_listed_is_not_evicted(edge: Edge) -> None:
    _store(edge, "busy", 1, seed=63)
    assert _run(edge, REPLICATE)["applied"] == 1
    _age(edge, "busy", 31)
    with edge.archive.index.reading() as conn:
        [listed] = [
            s for s in edge_sql.local_studies(conn) if s.study_uid == edge.studies["busy"][0]
        ]
    assert listed.unconfirmed == 0 and not listed.pending
    # A newer store into the study lands between the listing and the eviction.
    study, series, _ = edge.studies["busy"]
    ds = next(series_datasets("CT", n_instances=1, rows=32, columns=32, seed=64))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    source = edge.archive.settings.spool_dir.parent / "newer.dcm"
    source.write_bytes(dataset_bytes(ds))
    assert edge.archive.store.store(
        edge.archive.spool.from_file(source), principal=cli_principal()
    ).ok
    marked = edge.archive.index.write(
        lambda conn: edge_sql.mark_evicted(conn, listed, int(time.time() * 1000))
    )
    assert marked == []
    assert all(p.exists() for p in _blob_files(edge, "busy"))


def test_above_edge_keep_bytes_the_least_recently_changed_confirmed_study_goes(
    edge: Edge,
) -> None:
    _store(edge, "earlier", 2, seed=65)
    _store(edge, "later", 2, seed=66)
    _age(edge, "earlier", 2)  # both recent for edge_keep_days; "earlier" changed first
    # Forwarded: these 4 and the newer store into "busy" (the test before), all confirmed.
    assert _run(edge, REPLICATE)["applied"] == 5
    with edge.archive.index.reading() as conn:
        local = {s.study_uid: s for s in edge_sql.local_studies(conn)}
    later = local[edge.studies["later"][0]]
    edge.archive.evictor.keep_bytes = later.local_bytes
    try:
        result = _run(edge, EDGE_EVICT)
    finally:
        edge.archive.evictor.keep_bytes = 0
    # "busy" by its age (31 days), "earlier" by the size rule; "later" fits.
    assert result["studies_evicted"] == 2, result
    assert not any(p.exists() for p in _blob_files(edge, "busy"))
    assert not any(p.exists() for p in _blob_files(edge, "earlier"))
    assert all(p.exists() for p in _blob_files(edge, "later"))
    assert result["local_bytes"] == later.local_bytes


def test_a_corrected_study_stays_local(edge: Edge) -> None:
    """The cloud serves a corrected study's objects under the correction's overlay, not as
    the edge's digest names them: a read-through could not check them, so it is kept."""
    study = edge.studies["later"][0]
    edge.archive.corrections.update_study(
        cli_principal(), study, {"StudyDescription": "CT CHEST"}, reason="typo"
    )
    assert _run(edge, REPLICATE)["applied"] == 1  # the correction, at the cloud too
    _age(edge, "later", 31)
    result = _run(edge, EDGE_EVICT)
    assert result.get("studies_evicted", 0) == 0 and result["kept_corrected"] == 1, result
    assert all(p.exists() for p in _blob_files(edge, "later"))


def test_a_modality_stores_by_c_store_while_the_cloud_is_down(edge: Edge, tmp_path: Path) -> None:
    """dcmtk's storescu gets 0x0000 Success (PS3.4 B.2.3) from the edge with the cloud out of
    reach: the object is durable here and queued for the cloud, which is retried later."""
    need_dcmtk("storescu")
    edge.cloud.stop()
    ds = next(series_datasets("CT", n_instances=1, rows=32, columns=32, seed=67))
    source = tmp_path / "modality.dcm"
    source.write_bytes(dataset_bytes(ds))
    before = _outbox(edge)
    sent = run(["storescu", "-aet", "MODALITY", "-aec", "NUBIS", "127.0.0.1",
                str(edge.archive.settings.dimse_port), str(source)], check=False)  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    [inst] = edge.archive.retrieve.instances(cli_principal(), str(ds.StudyInstanceUID))
    assert inst.sop_instance_uid == str(ds.SOPInstanceUID)
    assert _outbox(edge) == before + 1
    result = _run(edge, REPLICATE)
    assert result["applied"] == 0 and result["unreachable"] >= 1, result
    assert _outbox(edge) == before + 1  # kept for the cloud's return
