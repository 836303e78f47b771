"""The built-in viewer's page (issue 10): what /ui/studies/{study}/view serves, to whom.

The archive runs in-process (Starlette's TestClient) with the real services, index and audit
trail; the viewer itself is driven in a browser in tests/browser/test_viewer.py.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

from integration import in_process_archive
from nubis.archive import Archive
from nubis.security.policy import Principal
from nubis.tools import synth
from nubis.web.app import create_app
from nubis.web.auth import SESSION_COOKIE

ADMIN = "viewer-page-test-admin-token-0123456789"
HOSTILE = "<script>alert(1)</script>"


@dataclass
class Site:
    archive: Archive
    study: str
    series: list[str]

    def client(self) -> TestClient:
        return TestClient(create_app(self.archive, manage_lifespan=False))

    def session(self, client: TestClient, principal: Principal, method: str) -> None:
        token, _ = self.archive.sessions.start(principal, auth_method=method, peer=None)
        client.cookies.set(SESSION_COOKIE, token)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("viewer-page")
    archive = in_process_archive(tmp / "data", ADMIN)
    archive.prepare()
    archive.start(background=False)
    archive.users.add_user("ada", tenant="default", roles="radiologist", password="x" * 16)
    patient = synth.PatientSpec("VIEW-PAGE", "Page^Pat", "19700101", "F")
    study = synth.synth_uid(7, "viewer-page-study")
    # Series 2 stored first: the page lists series by number, not by arrival.
    datasets = [
        *synth.series_datasets("MR", n_instances=2, rows=32, columns=32, patient=patient,
                               study_uid=study, series_number=2, series_description=HOSTILE),
        *synth.series_datasets("CT", n_instances=3, rows=32, columns=32, patient=patient,
                               study_uid=study, series_number=1),
    ]  # fmt: skip
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds) + b"\r\n"
        for ds in datasets
    )
    with TestClient(create_app(archive, manage_lifespan=False)) as client:
        response = client.post(
            "/dicom-web/studies",
            content=body + b"--b--\r\n",
            headers={
                "Authorization": f"Bearer {ADMIN}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            },
        )
        assert response.status_code == 200, response.text
    series = [str(datasets[-1].SeriesInstanceUID), str(datasets[0].SeriesInstanceUID)]
    yield Site(archive, study, series)
    archive.stop()


def _listed(html: str) -> list[str]:
    return re.findall(r'class="series-item" draggable="true" data-series="([0-9.]+)"', html)


def test_the_page_lists_the_series_in_order_and_opens_the_one_asked_for(site: Site) -> None:
    with site.client() as client:
        site.session(client, Principal("ada", "default", frozenset({"radiologist"})), "password")
        page = client.get(f"/ui/studies/{site.study}/view")
        assert page.status_code == 200
        assert _listed(page.text) == site.series
        assert f'data-series="{site.series[0]}" data-dicomweb="/dicom-web"' in page.text
        assert "S1 CT" in page.text and "3 objects" in page.text and "Page Pat" in page.text
        assert HOSTILE not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert f'href="/ui/studies/{site.study}"' in page.text  # back to the study page
        # No inline script or style: the Content-Security-Policy allows neither.
        assert "<script>" not in page.text and "style=" not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        chosen = client.get(f"/ui/studies/{site.study}/view", params={"series": site.series[1]})
        assert f'data-series="{site.series[1]}" data-dicomweb' in chosen.text
        unknown = client.get(f"/ui/studies/{site.study}/view", params={"series": "1.2.3"})
        assert f'data-series="{site.series[0]}" data-dicomweb' in unknown.text


def test_a_share_session_sees_the_viewer_without_a_way_into_the_archive(site: Site) -> None:
    with site.client() as client:
        share = Principal("share:test-link", "default", frozenset({"radiologist"}))
        site.session(client, share, "share")
        page = client.get(f"/ui/studies/{site.study}/view")
        assert page.status_code == 200
        assert _listed(page.text) == site.series
        assert re.findall(r'<a [^>]*href="([^"]*)"', page.text) == []  # no links at all


def test_malformed_uids_are_refused_by_name(site: Site) -> None:
    with site.client() as client:
        site.session(client, Principal("ada", "default", frozenset({"radiologist"})), "password")
        html = {"Accept": "text/html"}
        bad_study = client.get("/ui/studies/1.2.x/view", headers=html)
        assert bad_study.status_code == 400 and "Study Instance UID" in bad_study.text
        bad_series = client.get(
            f"/ui/studies/{site.study}/view", params={"series": "<b>"}, headers=html
        )
        assert bad_series.status_code == 400 and "Series Instance UID" in bad_series.text
        assert "<b>" not in bad_series.text


def test_the_page_is_recorded_as_the_query_it_stands_for(site: Site) -> None:
    before = site.archive.audit.head()[0]
    with site.client() as client:
        site.session(client, Principal("ada", "default", frozenset({"radiologist"})), "password")
        assert client.get(f"/ui/studies/{site.study}/view").status_code == 200
    records = [r.event_dict for r in site.archive.audit.scan(before, 100)]
    queries = [r for r in records if r["event_id"]["code"] == "110112"]  # DICOM Query
    assert len(queries) == 1, records
    asked = base64.b64encode(f"/studies/{site.study}/series (web viewer)".encode()).decode()
    assert asked in str(queries[0])


def test_the_dictionary_names_attributes_for_signed_in_users_only(site: Site) -> None:
    with site.client() as client:
        assert client.get("/ui/viewer/dictionary.json", follow_redirects=False).status_code == 303
        site.session(client, Principal("ada", "default", frozenset({"radiologist"})), "password")
        names = client.get("/ui/viewer/dictionary.json").json()
        assert names["00100020"] == "PatientID" and names["7FE00010"] == "PixelData"
