"""The web face's study browser, study page, its actions and the upload page (issue 10).

In-process (Starlette's TestClient) with a real Archive: the same services, index, blob store,
audit trail and policy as ``nubis serve``. What a browser does with these pages is in
tests/browser/test_studies.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydicom import dcmread
from starlette.testclient import TestClient

from integration import in_process_archive, page_csrf, web_sign_in
from nubis.archive import Archive
from nubis.dimse.peers import Peer, PeerTable
from nubis.security.policy import system_principal
from nubis.tools import synth
from nubis.web.app import create_app
from nubis.web.ui.display import size

ADMIN = "ui-studies-test-admin-token-0123456789"
PASSWORD = "correct horse battery staple"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'
XSS_NAME = "<script>alert(1)</script>"
FILLERS = 56  # more than a page (50) of studies besides the named ones

QUERY, ACCESSED, TRANSFERRED, DELETED, EXPORT, ALERT = (
    "110112",
    "110103",
    "110104",
    "110105",
    "110106",
    "110113",
)


@dataclass
class Site:
    archive: Archive
    tmp: Path
    studies: dict[str, str] = field(default_factory=dict)  # label -> Study Instance UID
    files: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> stored bytes
    series: dict[str, list[str]] = field(default_factory=dict)  # study UID -> series UIDs

    def client(self) -> TestClient:
        return TestClient(
            create_app(self.archive, manage_lifespan=False), base_url="http://nubis.test"
        )

    def store(self, datasets: list[object]) -> None:
        body = b""
        for ds in datasets:
            data = synth.dataset_bytes(ds)  # type: ignore[arg-type]
            self.files[str(ds.SOPInstanceUID)] = data  # type: ignore[attr-defined]
            body += b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
        with self.client() as client:
            response = client.post(
                "/dicom-web/studies",
                content=body + b"--b--\r\n",
                headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": DICOM_TYPE},
            )
        assert response.status_code == 200, response.text

    def study(
        self,
        label: str,
        patient: synth.PatientSpec,
        *,
        date: str = "20240115",
        description: str = "CT HEAD",
        accession: str = "",
        series: tuple[tuple[str, int], ...] = (("CT", 1),),
        seed: int = 0,
    ) -> str:
        uid = str(synth.synth_uid(9000 + seed, "ui-study", label))
        datasets = []
        for number, (modality, count) in enumerate(series, start=1):
            for ds in synth.series_datasets(
                modality,
                n_instances=count,
                rows=16,
                columns=16,
                patient=patient,
                study_uid=uid,
                study_date=date,
                accession=accession or f"ACC-{label}"[:16],
                seed=seed * 10 + number,
                series_number=number,
            ):
                ds.StudyDescription = description
                datasets.append(ds)
        self.store(datasets)
        self.studies[label] = uid
        self.series[uid] = list(dict.fromkeys(str(ds.SeriesInstanceUID) for ds in datasets))
        return uid


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ui-studies")
    archive = in_process_archive(tmp / "data", ADMIN, login_max_failures_per_address="0")
    archive.prepare()
    archive.start(background=False)
    users = archive.users
    for name, role in (
        ("alice", "radiologist"),
        ("rita", "referrer"),
        ("ada", "admin"),
        ("uma", "uploader"),
    ):
        users.add_user(name, tenant="default", roles=role, password=PASSWORD)
    users.grant("rita", tenant="default", patient_id="UI-GRANTED")
    site = Site(archive, tmp)
    site.study(
        "granted",
        synth.PatientSpec("UI-GRANTED", "Doe^Jane", "19700101", "F"),
        date="20240115",
        description="CT HEAD",
        accession="ACC-GRANTED",
        series=(("CT", 3), ("MR", 2)),
        seed=1,
    )
    site.study(
        "other",
        synth.PatientSpec("UI-OTHER", "Smith^John", "19600505", "M"),
        date="20230301",
        description="MR KNEE",
        accession="ACC-OTHER",
        series=(("MR", 1),),
        seed=2,
    )
    site.study(
        "odd",
        synth.PatientSpec("UI-ODD&<\"'>", XSS_NAME, "19800101", "O"),
        date="20220202",
        description='<img src=x onerror="alert(2)"> & "quotes"',
        accession="<b>ACC</b>",
        seed=3,
    )
    fillers = []
    for n in range(FILLERS):
        uid = str(synth.synth_uid(7000 + n, "ui-filler"))
        for ds in synth.series_datasets(
            "CT",
            n_instances=1,
            rows=8,
            columns=8,
            patient=synth.PatientSpec(f"UI-FILL-{n:03d}", f"Filler^N{n:03d}", "19900101", "F"),
            study_uid=uid,
            study_date=f"2010{1 + n % 12:02d}{1 + n % 28:02d}",
            accession=f"FILL{n:03d}",
            seed=100 + n,
        ):
            ds.StudyDescription = "FILLER"
            fillers.append(ds)
    site.store(fillers)
    yield site
    archive.stop()


# ---------------------------------------------------------------------------- helpers


def sign_in(client: TestClient, user: str) -> None:
    response = web_sign_in(client, user, PASSWORD)
    assert response.status_code == 303, response.text


def csrf(client: TestClient) -> str:
    return page_csrf(client, "/ui/upload")


def listed(html: str) -> list[str]:
    """The Study Instance UIDs a results page lists, in order."""
    return re.findall(r'<tr class="study" data-href="/ui/studies/([0-9.]+)"', html)


def search(client: TestClient, **fields: str) -> httpx.Response:
    """Submit the search form as a browser does (POST, then follow the redirect)."""
    data = {"csrf_token": csrf(client), **fields}
    response = client.post("/ui/", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client.get(response.headers["location"])


def records_since(site: Site, seq: int) -> list[dict[str, object]]:
    return [r.event_dict for r in site.archive.audit.scan(seq, 10_000)]


def has_record(records: list[dict[str, object]], code: str, user: str, study: str) -> bool:
    for record in records:
        text = json.dumps(record)
        if record["event_id"]["code"] == code and f'"{user}"' in text and study in text:  # type: ignore[index]
            return True
    return False


# ---------------------------------------------------------------------------- the list


def test_the_list_shows_a_referrer_only_granted_studies(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "rita")
        assert listed(client.get("/ui/").text) == [site.studies["granted"]]
        # The same search over DICOMweb with the same session: the same studies.
        qido = client.get("/dicom-web/studies").json()
        assert [s["0020000D"]["Value"][0] for s in qido] == [site.studies["granted"]]
        # Searching for another patient by name or ID finds nothing, as over QIDO-RS.
        assert listed(search(client, patient_name="Smith").text) == []
        assert listed(search(client, patient_id="UI-OTHER").text) == []
    with site.client() as client:
        sign_in(client, "alice")
        everything = listed(client.get("/ui/").text)
        assert site.studies["other"] in everything and site.studies["granted"] in everything


def test_a_page_is_one_audited_query(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "alice")
        before = site.archive.audit.head()[0]
        search(client, patient_name="Doe")
        records = records_since(site, before)
    queries = [r for r in records if r["event_id"]["code"] == QUERY]  # type: ignore[index]
    assert len(queries) == 1 and '"alice"' in json.dumps(queries[0])
    # The record holds the query as QIDO-RS would have it.
    asked = [
        base64.b64decode(o["query"]).decode()
        for o in queries[0]["objects"]  # type: ignore[union-attr]
        if o.get("query")
    ]
    assert asked == ["PatientName=Doe*&limit=50&orderby=-date"], asked


def test_filters_never_appear_in_urls(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "alice")
        form = {"csrf_token": csrf(client), "patient_name": "Doe, Jane", "patient_id": "UI-GRANTED"}
        response = client.post("/ui/", data=form, follow_redirects=False)
        location = response.headers["location"]
        assert response.status_code == 303
        for secret in ("Doe", "DOE", "Jane", "JANE", "UI-GRANTED", "GRANTED"):
            assert secret not in location
        results = client.get(location)
        assert listed(results.text) == [site.studies["granted"]]
        # Every link of the results page (sorting, paging) carries the filters sealed alone.
        for href in re.findall(r'href="([^"]+)"', results.text):
            assert "GRANTED" not in href and "Jane" not in href and "DOE" not in href
        # The form shows what was searched.
        assert 'value="Doe, Jane"' in results.text
    # The same URL in another session finds everything, and says the search was lost.
    with site.client() as other:
        sign_in(other, "alice")
        page = other.get(location)
        assert "belonged to an earlier session" in page.text
        assert len(listed(page.text)) == 50


def test_a_forged_or_damaged_search_token_is_ignored(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "alice")
        location = search(client, patient_id="UI-GRANTED").url
        token = parse_qs(urlsplit(str(location)).query)["q"][0]
        flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
        for bad in (flipped, token[:-4], "x" * 5000, "%%%", ""):
            page = client.get("/ui/", params={"q": bad})
            assert page.status_code == 200
            assert len(listed(page.text)) == 50


@pytest.mark.parametrize(
    ("fields", "label"),
    [
        ({"patient_name": "doe"}, "granted"),
        ({"patient_name": "DOE^JA*"}, "granted"),
        ({"patient_id": "UI-OTHER"}, "other"),
        ({"accession": "ACC-GRANTED"}, "granted"),
        ({"date_from": "2023-03-01", "date_to": "2023-03-01"}, "other"),
        ({"modality": "mr", "description": "KNEE"}, "other"),
        ({"description": "HEAD"}, "granted"),
    ],
)
def test_each_filter(site: Site, fields: dict[str, str], label: str) -> None:
    with site.client() as client:
        sign_in(client, "alice")
        assert listed(search(client, **fields).text) == [site.studies[label]]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"date_from": "2024-13-01"}, "not a valid calendar date"),
        ({"date_from": "yesterday"}, "not a date"),
        ({"date_from": "2024-02-01", "date_to": "2024-01-01"}, "ends before it starts"),
        ({"patient_name": "a\x01b"}, "control character"),
        ({"patient_id": "x" * 65}, "at most 64"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(
    site: Site, fields: dict[str, str], reason: str
) -> None:
    with site.client() as client:
        sign_in(client, "alice")
        response = client.post("/ui/", data={"csrf_token": csrf(client), **fields})
        assert response.status_code == 400
        assert reason in response.text
        # A patient's value is never quoted back in a reason (reasons are logged).
        assert "a\x01b" not in response.text.split('role="alert"')[1].split("</p>")[0]


def _dates(html: str) -> list[str]:
    return re.findall(r"<td>(\d{4}-\d{2}-\d{2})", html)


def test_sorting_and_paging(site: Site) -> None:
    total = FILLERS + 3
    with site.client() as client:
        sign_in(client, "alice")
        first = client.get("/ui/")
        newest = _dates(first.text)
        assert len(newest) == 50 and newest == sorted(newest, reverse=True)
        assert newest[0] == "2024-01-15"
        assert 'rel="next"' in first.text
        second = client.get("/ui/", params={"sort": "date", "dir": "desc", "page": "2"})
        rest = listed(second.text)
        assert len(rest) == total - 50 and 'rel="next"' not in second.text
        assert not set(rest) & set(listed(first.text))
        oldest = client.get("/ui/", params={"sort": "date", "dir": "asc"})
        assert _dates(oldest.text)[0] == "2010-01-01"
        by_name = client.get("/ui/", params={"sort": "name", "dir": "asc"})
        names = re.findall(r'<a href="/ui/studies/[0-9.]+">([^<]*)</a>', by_name.text)
        assert names[:2] == ["&lt;script&gt;alert(1)&lt;/script&gt;", "Doe, Jane"]
        assert names[2] == "Filler, N000"
        by_id = client.get("/ui/", params={"sort": "id", "dir": "desc"})
        assert listed(by_id.text)[0] == site.studies["other"]  # UI-OTHER sorts last
        # Column headers flip the direction of the current column.
        assert "dir=asc" in re.search(r'aria-sort="descending"><a href="([^"]+)"', first.text)[1]  # type: ignore[index]
        # A search keeps the page's order.
        found = search(client, description="*", sort="name", dir="desc")
        assert "sort=name" in str(found.url) and "dir=desc" in str(found.url)
        # Nonsense in the query string falls back to the defaults.
        junk = client.get("/ui/", params={"sort": "patient_name); DROP", "dir": "up", "page": "-3"})
        assert junk.status_code == 200 and _dates(junk.text) == newest


# ---------------------------------------------------------------------------- the study page


def test_the_study_page(site: Site) -> None:
    uid = site.studies["granted"]
    with site.client() as client:
        sign_in(client, "alice")
        before = site.archive.audit.head()[0]
        page = client.get(f"/ui/studies/{uid}")
        records = records_since(site, before)
    assert page.status_code == 200
    text = page.text
    assert "Doe, Jane" in text and "UI-GRANTED" in text and "CT HEAD" in text
    assert "Series / instances</dt><dd>2 / 5" in text
    for series_uid in site.series[uid]:
        assert f'src="/dicom-web/studies/{uid}/series/{series_uid}/thumbnail"' in text, (
            "a lazy thumbnail per series"
        )
        assert f"/ui/studies/{uid}/view?series={series_uid}" in text
    assert 'loading="lazy"' in text
    # New objects are in the first storage tier.
    assert '<span class="badge">hot</span> 5 objects' in text
    # Audited as the DICOMweb reads it stands for: a query and an access, naming the study.
    assert has_record(records, QUERY, "alice", "")
    assert has_record(records, ACCESSED, "alice", uid)


def test_series_sizes_are_the_stored_sizes(site: Site) -> None:
    uid = site.studies["granted"]
    stored = site.archive.retrieve.instances(system_principal(), uid)
    per_series: dict[str, int] = {}
    for inst in stored:
        per_series[inst.series_uid] = per_series.get(inst.series_uid, 0) + inst.size
    with site.client() as client:
        sign_in(client, "alice")
        text = client.get(f"/ui/studies/{uid}").text
    assert len(per_series) == 2
    for total in per_series.values():
        assert f"· {size(total)}" in text


def test_out_of_scope_study_is_a_404_page_like_a_missing_one(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "rita")
        hidden = client.get(f"/ui/studies/{site.studies['other']}", headers={"accept": "text/html"})
        absent = client.get("/ui/studies/1.2.3.4.5.6.7", headers={"accept": "text/html"})
        assert hidden.status_code == absent.status_code == 404
        assert "text/html" in hidden.headers["content-type"]
        assert "Smith" not in hidden.text and "UI-OTHER" not in hidden.text
        assert hidden.text.replace(site.studies["other"], "<uid>") == absent.text.replace(
            "1.2.3.4.5.6.7", "<uid>"
        )
        assert client.get(f"/ui/studies/{site.studies['granted']}").status_code == 200
        # Nor can its ZIP, delete page or send be reached.
        other = site.studies["other"]
        assert client.get(f"/ui/studies/{other}/download").status_code == 404
        assert client.get(f"/ui/studies/{other}/delete").status_code == 404
        bad = client.get("/ui/studies/not-a-uid", headers={"accept": "text/html"})
        assert bad.status_code == 400


def test_hostile_text_is_shown_as_text(site: Site) -> None:
    uid = site.studies["odd"]
    with site.client() as client:
        sign_in(client, "alice")
        for html in (client.get("/ui/").text, client.get(f"/ui/studies/{uid}").text):
            assert "<script>alert" not in html and 'onerror="' not in html
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        study = client.get(f"/ui/studies/{uid}").text
        assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt; &amp; &#34;quotes&#34;" in study
        assert "&lt;b&gt;ACC&lt;/b&gt;" in study
        assert "<script" not in re.sub(
            r'<script type="module" src="/ui/static/[a-z]+\.js">', "", study
        )


def test_actions_follow_the_role(site: Site) -> None:
    uid = site.studies["granted"]
    expectations = {
        # user: (delete link, upload link, study page status)
        "ada": (True, True, 200),
        "alice": (False, True, 200),
        "rita": (False, False, 200),
        "uma": (False, True, 403),
    }
    for user, (delete, upload, status) in expectations.items():
        with site.client() as client:
            sign_in(client, user)
            page = client.get(f"/ui/studies/{uid}", headers={"accept": "text/html"})
            assert page.status_code == status, user
            assert (f"/ui/studies/{uid}/delete" in page.text) is delete, user
            assert ('href="/ui/upload"' in client.get("/ui/upload").text) is upload, user
            if status == 403:
                # Signed in, an uploader lands on the list: told why, offered the upload.
                home = client.get("/ui/", headers={"accept": "text/html"})
                assert home.status_code == 403 and "may not read" in home.text
                assert '<a class="button" href="/ui/upload">Upload</a>' in home.text
            if status == 200:
                assert f"/ui/studies/{uid}/download" in page.text
                assert f"/ui/studies/{uid}/share" in page.text
                assert f"/ui/studies/{uid}/view" in page.text


# ---------------------------------------------------------------------------- download


def _zip(response: httpx.Response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(response.content))


def test_download_is_the_stored_files_byte_for_byte_and_audited(site: Site) -> None:
    uid = site.studies["granted"]
    with site.client() as client:
        sign_in(client, "rita")  # a referrer may download what is granted
        before = site.archive.audit.head()[0]
        response = client.get(f"/ui/studies/{uid}/download")
        records = records_since(site, before)
    assert response.headers["content-disposition"] == f'attachment; filename="{uid}.zip"'
    archive = _zip(response)
    assert archive.testzip() is None
    names = archive.namelist()
    assert len(names) == 5
    for name in names:
        series_uid, _, file_name = name.partition("/")
        sop = file_name.removesuffix(".dcm")
        assert re.fullmatch(r"[0-9.]+/[0-9.]+\.dcm", name), "names from UIDs only"
        assert series_uid in site.series[uid]
        assert archive.read(name) == site.files[sop]
        assert dcmread(io.BytesIO(archive.read(name))).SOPInstanceUID == sop
    assert has_record(records, TRANSFERRED, "rita", uid)
    assert has_record(records, EXPORT, "rita", uid)


def test_download_of_one_series(site: Site) -> None:
    uid = site.studies["granted"]
    mr = site.series[uid][1]
    with site.client() as client:
        sign_in(client, "alice")
        archive = _zip(client.get(f"/ui/studies/{uid}/download", params={"series": mr}))
    assert len(archive.namelist()) == 2 and all(n.startswith(mr + "/") for n in archive.namelist())


def test_download_is_refused_to_roles_that_may_not_read(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "uma")
        assert client.get(f"/ui/studies/{site.studies['granted']}/download").status_code == 403


def test_zip_stream_uses_zip64_past_the_classic_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes and offsets past 4 GiB and more than 65,535 entries need ZIP64 records (APPNOTE
    4.3.9, 4.4.8); the limits are lowered here so that small entries cross them."""
    from nubis.services.export import zip_stream

    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 3)
    contents = {f"1.2.3/1.2.3.{n}.dcm": bytes([n]) * (700 * n) for n in range(1, 6)}
    data = b"".join(
        zip_stream(
            (name, len(body), iter([body[:500], body[500:]])) for name, body in contents.items()
        )
    )
    monkeypatch.undo()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data  # ZIP64 end records
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == contents
    path = Path("/tmp") / f"nubis-zip64-{time.time_ns()}.zip"
    path.write_bytes(data)
    try:
        checked = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        path.unlink()


def test_zip_stream_holds_one_chunk_at_a_time() -> None:
    """A large entry comes out as it goes in: the stream never waits for a whole entry."""
    from nubis.services.export import zip_stream

    pulled = 0

    def chunks() -> Iterator[bytes]:
        nonlocal pulled
        for _ in range(64):
            pulled += 1
            yield b"\0" * (1 << 20)

    stream = zip_stream([("1.2/1.2.3.dcm", 64 << 20, chunks())])
    received = 0
    for piece in stream:
        received += len(piece)
        assert len(piece) <= (2 << 20)
        assert received >= (pulled - 2) << 20, "bytes held back"
    assert received > 64 << 20


# ---------------------------------------------------------------------------- delete


def test_delete_asks_first_and_only_a_role_that_may_delete_can(site: Site) -> None:
    uid = site.study("doomed", synth.PatientSpec("UI-DOOMED", "Gone^Soon", "19500101", "M"), seed=4)
    with site.client() as client:
        sign_in(client, "alice")
        confirm = client.get(f"/ui/studies/{uid}/delete")
        assert confirm.status_code == 200 and "may not delete" in confirm.text
        assert 'action="/ui/studies/' not in confirm.text
        before = site.archive.audit.head()[0]
        refused = client.post(f"/ui/studies/{uid}/delete", data={"csrf_token": csrf(client)})
        assert refused.status_code == 403
        assert has_record(records_since(site, before), ALERT, "alice", uid)
        assert client.get(f"/ui/studies/{uid}").status_code == 200
    with site.client() as client:
        sign_in(client, "ada")
        confirm = client.get(f"/ui/studies/{uid}/delete")
        assert "Delete this study?" in confirm.text and "Gone, Soon" in confirm.text
        assert f'action="/ui/studies/{uid}/delete"' in confirm.text
        # The confirmation is the form's: without its CSRF token nothing is deleted.
        assert client.post(f"/ui/studies/{uid}/delete", data={}).status_code == 403
        assert client.get(f"/ui/studies/{uid}").status_code == 200
        before = site.archive.audit.head()[0]
        done = client.post(
            f"/ui/studies/{uid}/delete", data={"csrf_token": csrf(client)}, follow_redirects=False
        )
        assert done.status_code == 303 and done.headers["location"] == "/ui/?notice=deleted"
        assert "The study was deleted." in client.get(done.headers["location"]).text
        assert has_record(records_since(site, before), DELETED, "ada", uid)
        assert client.get(f"/ui/studies/{uid}").status_code == 404


# ---------------------------------------------------------------------------- CSRF


def test_every_form_needs_its_csrf_token(site: Site) -> None:
    uid = site.studies["granted"]
    with site.client() as client:
        sign_in(client, "ada")
        for path, data in (
            ("/ui/", {"patient_name": "Doe"}),
            (f"/ui/studies/{uid}/delete", {}),
            (f"/ui/studies/{uid}/send", {"destination": "ANY"}),
            ("/ui/logout", {}),
        ):
            for token in (None, "forged-token"):
                form = dict(data) if token is None else {**data, "csrf_token": token}
                response = client.post(path, data=form, follow_redirects=False)
                assert response.status_code == 403, (path, token)
        assert client.get(f"/ui/studies/{uid}").status_code == 200


# ---------------------------------------------------------------------------- send


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp, a real Storage SCP to send to."""
    port = _free_port()
    out = tmp_path / "received"
    out.mkdir()
    process = subprocess.Popen(
        ["storescp", "-aet", "UITARGET", "-od", str(out), "+xa", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port, out
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for_send(client: TestClient, url: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = client.get(url)
        assert page.status_code == 200
        if 'http-equiv="refresh"' not in page.text:
            return page.text
        time.sleep(0.2)
    raise AssertionError("the send did not finish")


def test_send_to_a_dimse_peer(site: Site, storescp: tuple[int, Path]) -> None:
    port, received = storescp
    PeerTable(site.archive.index).put(Peer("UITARGET", "127.0.0.1", port))
    uid = site.studies["granted"]
    try:
        with site.client() as client:
            sign_in(client, "alice")
            page = client.get(f"/ui/studies/{uid}").text
            assert '<option value="UITARGET">' in page
            before = site.archive.audit.head()[0]
            response = client.post(
                f"/ui/studies/{uid}/send",
                data={"csrf_token": csrf(client), "destination": "UITARGET"},
                follow_redirects=False,
            )
            assert response.status_code == 303
            status_url = response.headers["location"]
            assert re.fullmatch(rf"/ui/studies/{re.escape(uid)}/sends/\d+", status_url)
            result = _wait_for_send(client, status_url)
            assert "Sent: 5 objects" in result, result
            assert has_record(records_since(site, before), TRANSFERRED, "alice", uid)
        files = sorted(received.iterdir())
        assert len(files) == 5
        sent = {str(dcmread(f).SOPInstanceUID) for f in files}
        assert sent == {
            s for s in site.files if dcmread(io.BytesIO(site.files[s])).StudyInstanceUID == uid
        }
        # Another user cannot see the send (nor learn that it exists).
        with site.client() as other:
            sign_in(other, "ada")
            assert other.get(status_url).status_code == 404
    finally:
        PeerTable(site.archive.index).remove("UITARGET")


def test_a_send_outside_the_scope_fails_like_a_missing_study(
    site: Site, storescp: tuple[int, Path]
) -> None:
    port, received = storescp
    PeerTable(site.archive.index).put(Peer("UITARGET", "127.0.0.1", port))
    try:
        with site.client() as client:
            sign_in(client, "rita")
            response = client.post(
                f"/ui/studies/{site.studies['other']}/send",
                data={"csrf_token": csrf(client), "destination": "UITARGET"},
                follow_redirects=False,
            )
            assert response.status_code == 303
            result = _wait_for_send(client, response.headers["location"])
            assert f"no study {site.studies['other']}" in result
        assert list(received.iterdir()) == []
        with site.client() as client:
            sign_in(client, "uma")  # may not read: refused before any job
            refused = client.post(
                f"/ui/studies/{site.studies['granted']}/send",
                data={"csrf_token": csrf(client), "destination": "UITARGET"},
            )
            assert refused.status_code == 403
        with site.client() as client:
            sign_in(client, "alice")
            unknown = client.post(
                f"/ui/studies/{site.studies['granted']}/send",
                data={"csrf_token": csrf(client), "destination": "NOBODY"},
            )
            assert unknown.status_code == 400 and "not a DIMSE peer" in unknown.text
    finally:
        PeerTable(site.archive.index).remove("UITARGET")


def test_a_send_to_a_peer_that_does_not_answer_is_reported(site: Site) -> None:
    PeerTable(site.archive.index).put(Peer("UIDEAD", "127.0.0.1", _free_port()))
    try:
        with site.client() as client:
            sign_in(client, "alice")
            response = client.post(
                f"/ui/studies/{site.studies['granted']}/send",
                data={"csrf_token": csrf(client), "destination": "UIDEAD"},
                follow_redirects=False,
            )
            result = _wait_for_send(client, response.headers["location"])
            assert "could not be associated with" in result, result
    finally:
        PeerTable(site.archive.index).remove("UIDEAD")


# ---------------------------------------------------------------------------- upload


def test_the_upload_page(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "alice")
        page = client.get("/ui/upload")
        assert page.status_code == 200
        assert "webkitdirectory" in page.text and 'src="/ui/static/upload.js"' in page.text
        assert re.search(r'<meta name="csrf-token" content="[^"]+">', page.text)
    with site.client() as client:
        sign_in(client, "rita")
        page = client.get("/ui/upload")
        assert "may not store" in page.text and "upload.js" not in page.text


def test_upload_goes_through_stow_rs_with_the_csrf_header(site: Site) -> None:
    """What upload.js sends: one STOW-RS part per file, the session's token in X-CSRF-Token."""
    ds = next(
        synth.series_datasets(
            "CT",
            n_instances=1,
            rows=8,
            columns=8,
            patient=synth.PatientSpec("UI-UPLOADED", "Up^Loaded", "19900101", "F"),
            seed=55,
        )
    )
    body = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds)
    body += b"\r\n--x--\r\n"
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'}
    with site.client() as client:
        sign_in(client, "uma")
        assert client.post("/dicom-web/studies", content=body, headers=headers).status_code == 403
        stored = client.post(
            "/dicom-web/studies", content=body, headers={**headers, "X-CSRF-Token": csrf(client)}
        )
        assert stored.status_code == 200, stored.text


def test_static_files_and_no_inline_script(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "ada")
        for path in ("/ui/static/studies.js", "/ui/static/upload.js", "/ui/static/studies.css"):
            assert client.get(path).status_code == 200, path
        for path in ("/ui/", f"/ui/studies/{site.studies['granted']}", "/ui/upload"):
            html = client.get(path).text
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
            tags = re.findall(r"<[a-zA-Z][^>]*>", html)
            assert not [t for t in tags if re.search(r"\s(on[a-z]+|style)\s*=", t)], path
