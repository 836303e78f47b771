"""What a share link's session reaches (issue 10): its study, or the series it names, and
nothing else, over every DICOMweb route, QIDO-RS at every level included (PS3.18 10.6, 10.4,
9); a view-only link reads metadata, frames and rendered images but no whole object.

The scope is the grants mechanism's (index/query_sql.granted_to), as for a referrer: these
tests hold for any principal whose grant names a series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient

from integration.shares_site import Site, make_site
from nubis.security.policy import Principal

_STUDY = "/dicom-web/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from make_site(tmp_path_factory.mktemp("share-scope"))


def _session(site: Site, *, series: tuple[str, ...] = (), download: bool = False) -> TestClient:
    """A client holding the session of a new link to SHARED (alice's)."""
    alice = Principal("alice", "default", frozenset({"radiologist"}))
    sharing = site.archive.sharing
    _, token = sharing.create(
        alice, site.studies["SHARED"].study, series_uids=series, can_download=download
    )
    opened = sharing.open(token, pin="", peer="127.0.0.1")
    client = site.client()
    client.cookies.set("nubis_session", opened.session_token)
    return client


def _uids(response: Any, tag: str) -> set[str]:
    assert response.status_code == 200, response.text
    return {item[tag]["Value"][0] for item in response.json()}


def _get_routes(client: TestClient) -> Iterator[str]:
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount) and route.path == "/dicom-web":
            for sub in route.routes:
                if isinstance(sub, WebSocketRoute):
                    continue  # the UPS event channel: no GET (test_authz's ups-channel rule)
                assert isinstance(sub, Route)
                if "GET" in (sub.methods or ()):
                    yield route.path + sub.path
        elif isinstance(route, Route) and route.path == "/wado":
            yield route.path


def _fill(path: str, study: str, series: str, instance: str, workitem: str = "") -> str:
    url = (
        path.replace("{workitem}", workitem)
        .replace("{study}", study)
        .replace("{series}", series)
        .replace("{instance}", instance)
        .replace("{frames}", "1")
        .replace("{path:path}", "7FE00010")
    )
    if url == "/wado":
        url += (
            f"?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={instance}"
            "&contentType=image/png"
        )
    elif "{" not in path and path.count("/") == 2:  # /studies, /series, /instances, /workitems
        url += f"?StudyInstanceUID={study}"
    return url


def _is_query(path: str) -> bool:
    return path.rstrip("}").endswith(("/studies", "/series", "/instances"))


def test_a_link_reaches_no_other_study(site: Site) -> None:
    """Every GET route of DICOMweb and WADO-URI, aimed at another patient's study of the
    tenant and at a study of another tenant (whose patient has the same ID), and at their
    workitems (UPS-RS): empty query results or 404; retrieving whole objects is refused first
    (403: the link may not). The shared study's workitem is the only one the link finds."""
    with _session(site) as client:
        failures = []
        for path in _get_routes(client):
            for target in ("OTHER", "FOREIGN"):
                study = site.studies[target]
                series = study.series[0]
                url = _fill(path, study.study, series, study.instances[series][0], study.workitem)
                response = client.get(url)
                whole = path in (_STUDY, _SERIES, _INSTANCE)
                if path.endswith("/workitems"):
                    ok = response.status_code == 204  # no match (PS3.18 11.9.3)
                elif _is_query(path):
                    ok = response.status_code == 200 and response.json() == []
                else:
                    ok = response.status_code == (403 if whole else 404)
                if not ok:
                    failures.append(f"{path} [{target}]: {response.status_code}")
        assert failures == []
        shared = site.studies["SHARED"].study
        listed = _uids(client.get("/dicom-web/workitems"), "00080018")
        assert listed == {site.studies["SHARED"].workitem}
        for level in ("studies", "series", "instances"):
            for params in ({}, {"PatientID": "SH-1"}, {"PatientID": "*"}, {"PatientName": "*"}):
                found = _uids(client.get(f"/dicom-web/{level}", params=params), "0020000D")
                assert found == {shared}, (level, params)
        # Another study's series under the shared study's path.
        other = site.studies["OTHER"]
        crossed = f"/dicom-web/studies/{shared}/series/{other.series[0]}/metadata"
        assert client.get(crossed).status_code == 404
        # Break-glass is for staff: a link asking for it is refused, never widened.
        urgent = client.get(
            f"/dicom-web/studies/{other.study}/metadata",
            headers={"X-Nubis-Break-Glass": "please"},
        )
        assert urgent.status_code == 403


def test_a_link_to_some_series_reaches_only_those(site: Site) -> None:
    """A link to the CT series of a CT + MR study: the study is found, only the CT series
    of it, at every QIDO-RS level and through metadata, frames, rendered, bulk, thumbnails,
    WADO-RS and WADO-URI retrieval."""
    shared = site.studies["SHARED"]
    ct, mr = shared.series
    ct_sop, mr_sop = shared.instances[ct][0], shared.instances[mr][0]
    study = shared.study
    with _session(site, series=(ct,), download=True) as client:
        assert _uids(client.get("/dicom-web/studies"), "0020000D") == {study}
        for url in (
            f"/dicom-web/studies/{study}/series",
            f"/dicom-web/series?StudyInstanceUID={study}",
        ):
            assert _uids(client.get(url), "0020000E") == {ct}, url
        assert client.get(f"/dicom-web/series?SeriesInstanceUID={mr}").json() == []
        for url in (
            f"/dicom-web/studies/{study}/instances",
            f"/dicom-web/instances?StudyInstanceUID={study}",
            "/dicom-web/instances",
        ):
            assert _uids(client.get(url), "00080018") == set(shared.instances[ct]), url
        assert client.get(f"/dicom-web/studies/{study}/series/{mr}/instances").json() == []
        assert client.get(f"/dicom-web/instances?SOPInstanceUID={mr_sop}").json() == []
        metadata = client.get(f"/dicom-web/studies/{study}/metadata").json()
        assert {m["0020000E"]["Value"][0] for m in metadata} == {ct} and len(metadata) == 2
        retrieved = client.get(f"/dicom-web/studies/{study}")
        assert retrieved.status_code == 200
        assert retrieved.content.count(b"Content-Type: application/dicom") == 2
        for series, sop, status in ((ct, ct_sop, 200), (mr, mr_sop, 404)):
            base = f"/dicom-web/studies/{study}/series/{series}"
            for url in (
                base,
                base + "/metadata",
                base + "/thumbnail",
                base + f"/instances/{sop}",
                base + f"/instances/{sop}/metadata",
                base + f"/instances/{sop}/frames/1",
                base + f"/instances/{sop}/rendered",
                base + f"/instances/{sop}/bulk/7FE00010",
                f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
                "&contentType=application/dicom",
            ):
                assert client.get(url).status_code == status, url
        # The study's thumbnail is drawn from what the link holds.
        assert client.get(f"/dicom-web/studies/{study}/thumbnail").status_code == 200


def test_view_only_reads_but_never_takes_the_objects(site: Site) -> None:
    """Frames, rendered images, thumbnails, bulk data and metadata: yes. The objects as DICOM
    files (WADO-RS instances at every level, WADO-URI application/dicom): 403, recorded."""
    shared = site.studies["SHARED"]
    ct = shared.series[0]
    sop = shared.instances[ct][0]
    study = shared.study
    base = f"/dicom-web/studies/{study}/series/{ct}/instances/{sop}"
    wado = f"/wado?requestType=WADO&studyUID={study}&seriesUID={ct}&objectUID={sop}"
    after = site.archive.audit.head()[0]
    with _session(site) as client:
        for url in (
            f"/dicom-web/studies/{study}/metadata",
            base + "/metadata",
            base + "/frames/1",
            base + "/rendered",
            base + "/thumbnail",
            base + "/bulk/7FE00010",
            f"/dicom-web/studies/{study}/thumbnail",
            wado,
            wado + "&contentType=image/jpeg,application/dicom",
        ):
            assert client.get(url).status_code == 200, url
        for url in (
            f"/dicom-web/studies/{study}",
            f"/dicom-web/studies/{study}/series/{ct}",
            base,
            wado + "&contentType=application/dicom",
            wado + "&contentType=application/dicom,image/jpeg",
        ):
            refused = client.get(url)
            assert refused.status_code == 403, url
            assert "may not download" in refused.json()["reason"]
        who = client.get("/-/whoami").json()["id"]
    assert any(
        r.event_dict["event_id"]["code"] == "110113"
        and r.event_dict["participants"][0]["user_id"] == who
        for r in site.archive.audit.scan(after, 100000)
    )
    with _session(site, download=True) as client:
        assert client.get(f"/dicom-web/studies/{study}").status_code == 200
        assert client.get(wado + "&contentType=application/dicom").status_code == 200
