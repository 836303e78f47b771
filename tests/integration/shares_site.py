"""A live archive (in-process, real services, index, audit trail and login throttle) holding the
studies the share link tests share, and the helpers a browser's steps take (forms, tokens).

Studies: SHARED (patient SH-1, a CT series and an MR series), OTHER (patient SH-2, same
tenant) and FOREIGN (tenant "other", patient SH-1 again). Users: alice and bob
(radiologists), ada (admin), rita and ref2 (referrers), uma (uploader), otto (radiologist of
tenant "other").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
from starlette.testclient import TestClient

from integration import in_process_archive, page_csrf, web_sign_in
from nubis.archive import Archive
from nubis.security.policy import Principal
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "share-test-admin-token-0123456789abcdef"
PASSWORD = "correct horse battery staple"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'
TOKEN_IN_PAGE = re.compile(r"/share/([A-Za-z0-9_-]{43})\"")


@dataclass
class Study:
    study: str
    series: list[str] = field(default_factory=list)
    instances: dict[str, list[str]] = field(default_factory=dict)  # series -> SOP UIDs
    workitem: str = ""  # a UPS workitem of the study's patient and study (docs/worklists.md)


@dataclass
class Site:
    archive: Archive
    tmp: Path
    studies: dict[str, Study]
    keys: dict[str, str]

    def client(self) -> TestClient:
        return TestClient(
            create_app(self.archive, manage_lifespan=False), base_url="http://nubis.test"
        )


def _store(archive: Archive, key: str, datasets: list[pydicom.Dataset]) -> None:
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds) + b"\r\n"
        for ds in datasets
    )
    with TestClient(create_app(archive, manage_lifespan=False)) as client:
        response = client.post(
            "/dicom-web/studies",
            content=body + b"--b--\r\n",
            headers={"Authorization": f"Bearer {key}", "Content-Type": DICOM_TYPE},
        )
    assert response.status_code == 200, response.text


def _study(patient: str, seed: int, modalities: tuple[str, ...]) -> tuple[Study, list]:
    spec = synth.PatientSpec(patient, "Share^Pat", "19700101", "F")
    study_uid = str(synth.synth_uid(seed, "share-study"))
    found = Study(study_uid)
    datasets = []
    for number, modality in enumerate(modalities, start=1):
        series = list(
            synth.series_datasets(
                modality,
                n_instances=2,
                rows=32,
                columns=32,
                patient=spec,
                study_uid=study_uid,
                seed=seed + number,
                series_number=number,
            )
        )
        uid = str(series[0].SeriesInstanceUID)
        found.series.append(uid)
        found.instances[uid] = [str(ds.SOPInstanceUID) for ds in series]
        datasets += series
    return found, datasets


def _workitem(patient: str, study: str) -> dict[str, dict[str, object]]:
    return {
        "00100020": {"vr": "LO", "Value": [patient]},
        "0020000D": {"vr": "UI", "Value": [study]},
        "00741200": {"vr": "CS", "Value": ["LOW"]},
        "00741204": {"vr": "LO", "Value": ["read"]},
        "00404005": {"vr": "DT", "Value": ["20260101120000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
    }


def make_site(tmp: Path) -> Iterator[Site]:
    archive = in_process_archive(
        tmp / "data", ADMIN, login_max_failures_per_user="3", login_max_failures_per_address="50"
    )
    archive.prepare()
    archive.start(background=False)
    users = archive.users
    for name, role, tenant in (
        ("alice", "radiologist", "default"),
        ("bob", "radiologist", "default"),
        ("ada", "admin", "default"),
        ("rita", "referrer", "default"),
        ("ref2", "referrer", "default"),
        ("uma", "uploader", "default"),
        ("otto", "radiologist", "other"),
        ("oadmin", "admin", "other"),
    ):
        users.add_user(name, tenant=tenant, roles=role, password=PASSWORD)
    keys = {name: users.create_api_key(name)[1] for name in ("ref2", "rita", "oadmin")}
    keys["admin"] = ADMIN
    studies = {}
    for name, patient, seed, modalities, key in (
        ("SHARED", "SH-1", 100, ("CT", "MR"), ADMIN),
        ("OTHER", "SH-2", 200, ("CT",), ADMIN),
        ("FOREIGN", "SH-1", 300, ("CT",), keys["oadmin"]),
    ):
        study, datasets = _study(patient, seed, modalities)
        _store(archive, key, datasets)
        tenant = "other" if name == "FOREIGN" else "default"
        scheduler = Principal("scheduler", tenant, frozenset({"admin"}))
        study.workitem = archive.worklist.create(
            scheduler, _workitem(patient, study.study), str(synth.synth_uid(seed, "workitem"))
        )
        studies[name] = study
    yield Site(archive, tmp, studies, keys)
    archive.stop()


# ---------------------------------------------------------------------- a browser's steps
def sign_in(client: TestClient, user: str) -> None:
    response = web_sign_in(client, user, PASSWORD)
    assert response.status_code == 303, response.text


def csrf(client: TestClient, path: str = "/ui/") -> str:
    return page_csrf(client, path)


def create_link(client: TestClient, study: str, **form: str | list[str]) -> tuple[str, str]:
    """Make a link from the study's share page as the signed-in user: (token, link id)."""
    data: dict[str, str | list[str]] = {"csrf_token": csrf(client), "days": "7", **form}
    response = client.post(f"/ui/studies/{study}/share", data=data)
    assert response.status_code == 201, response.text
    token = TOKEN_IN_PAGE.search(response.text)
    assert token, response.text
    link = re.search(r'data-created-link="([0-9a-f]{16})"', response.text)
    assert link
    return token.group(1), link.group(1)


def open_link(client: TestClient, token: str, pin: str = "") -> httpx.Response:
    """What the recipient's browser does: the entry page, then its button (and PIN)."""
    entry = client.get(f"/share/{token}")
    assert entry.status_code == 200, entry.text
    assert "nubis_session" not in entry.headers.get("set-cookie", "")
    form = re.search(r'name="open_csrf" value="([^"]+)"', entry.text)
    assert form
    return client.post(
        f"/share/{token}",
        data={"open_csrf": form.group(1), "pin": pin},
        follow_redirects=False,
    )


def opened(site: Site, token: str) -> TestClient:
    """A fresh client (no account) holding the link's session."""
    client = site.client()
    response = open_link(client, token)
    assert response.status_code == 303, response.text
    return client
