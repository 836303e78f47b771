"""Authorization matrix generated from the route table, and UID guessing (issue 4).

Every DICOMweb route and method is requested by every kind of caller (anonymous, expired key,
unknown key, each built-in role, an admin of another tenant) on three studies: one the caller
may see ("own": patient P-OWN, granted to the referrer), another patient's study of the same
tenant, and a study of another tenant. A route added without a rule in ``RULES`` fails
``test_every_route_has_a_rule``, so nothing new ships unguarded.

The archive runs in-process (Starlette's TestClient) with the real services, index, blob store
and audit trail: the same code as ``nubis serve`` without the subprocess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from nubis.archive import Archive
from nubis.config import load_settings
from nubis.tools import synth
from nubis.web.app import create_app
from nubis.web.auth import PUBLIC_PATHS

ADMIN = "authz-test-admin-token-0123456789abcdef"

# (path, method) -> what it needs: read, write or delete. Public routes need nothing.
RULES: dict[tuple[str, str], str] = {}
_STUDY = "/dicom-web/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
for _path in ("/dicom-web/studies", _STUDY):
    RULES[(_path, "POST")] = "write"
for _path in (
    "/dicom-web/studies",
    "/dicom-web/series",
    "/dicom-web/instances",
    _STUDY + "/series",
    _STUDY + "/instances",
    _SERIES + "/instances",
    "/wado",
):
    RULES[(_path, "GET")] = "read"
for _resource in (_STUDY, _SERIES, _INSTANCE):
    RULES[(_resource, "GET")] = "read"
    RULES[(_resource, "DELETE")] = "delete"
    RULES[(_resource + "/metadata", "GET")] = "read"
    RULES[(_resource + "/thumbnail", "GET")] = "read"
for _suffix in (
    "/rendered",
    "/frames/{frames}",
    "/frames/{frames}/rendered",
    "/frames/{frames}/thumbnail",
    "/bulk/{path:path}",
):
    RULES[(_INSTANCE + _suffix, "GET")] = "read"
RULES[("/-/login", "POST")] = "login"
RULES[("/-/whoami", "GET")] = "any"
# The audit log (HIPAA 164.312(b)): archive-wide, so for the home tenant's auditors and admins.
RULES[("/audit/records", "GET")] = "audit"
RULES[("/audit/verify", "GET")] = "audit"
# The web face: the entry and sign-in are open to anyone; a "page" shows a signed-out browser
# the sign-in page (303) and any signed-in role the page, whose content the services scope.
RULES[("/", "GET")] = "public"
RULES[("/ui/login", "GET")] = "public"
RULES[("/ui/login", "POST")] = "public"
RULES[("/ui/logout", "POST")] = "any"
RULES[("/ui/", "GET")] = "page"
# Signing in with the OIDC provider is open to anyone, as the password form is.
RULES[("/ui/login/oidc", "GET")] = "public"
RULES[("/ui/oidc/callback", "GET")] = "public"
# OHIF's own files hold no patient data and are served to anyone; its pages send a signed-out
# browser to sign in, and its data comes over DICOMweb (tests/browser/test_ohif.py).
RULES[("/ohif", "GET")] = "public"
RULES[("/ohif/{path:path}", "GET")] = "public"
RULES[("/ohif/{path:path}", "HEAD")] = "public"

# What each role may do, written out independently of nubis.security.policy.
CAN = {
    "admin": {"read", "write", "delete", "audit"},
    "radiologist": {"read", "write"},
    "referrer": {"read"},
    "uploader": {"write"},
    "modality": {"write"},
    "researcher": set(),
    "auditor": {"audit"},
}
GRANTED_ONLY = {"referrer"}


def _routes(app: object) -> Iterator[tuple[str, str]]:
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount):
            for sub in route.routes:
                assert isinstance(sub, Route)
                for method in sorted(sub.methods or ()):
                    if method != "HEAD":
                        yield route.path + sub.path, method
        elif isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield route.path, method


@dataclass
class Study:
    study: str
    series: str
    instance: str
    patient: str
    bulk: str = ""


@dataclass
class World:
    client: TestClient
    archive: Archive
    keys: dict[str, str]
    studies: dict[str, Study]
    tmp: Path
    counter: int = 100

    def headers(self, who: str) -> dict[str, str]:
        if who == "anonymous":
            return {}
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def store(self, key: str, path: Path) -> None:
        body = (
            b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n"
        )
        response = self.client.post(
            "/dicom-web/studies",
            content=body,
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            },
        )
        assert response.status_code == 200, response.text

    def make(self, patient: str, *, study_uid: str | None = None) -> tuple[Path, Study]:
        self.counter += 1
        path = synth.make_multiframe(
            self.tmp / f"obj{self.counter}.dcm",
            frames=2,
            rows=32,
            columns=32,
            seed=self.counter,
            patient=synth.PatientSpec(patient, "Doe^Jo", "19700101", "F"),
            study_uid=study_uid,
        )
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return path, Study(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), patient
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("authz")
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp / "data"),
            "durable": "false",
            "admin_token": ADMIN,
            "dimse_port": "0",
            "log_level": "warning",
        },
    )
    archive = Archive(settings)
    with TestClient(create_app(archive)) as client:
        users = archive.users
        keys = {"admin": ADMIN}
        for role in CAN:
            if role == "admin":
                continue
            users.add_user(role, tenant="default", roles=role)
            keys[role] = users.create_api_key(role)[1]
        users.add_user("other-admin", tenant="other", roles="admin")
        keys["other-admin"] = users.create_api_key("other-admin")[1]
        users.add_user("expired", tenant="default", roles="admin")
        keys["expired"] = users.create_api_key("expired", expires_in_days=-1)[1]
        keys["unknown"] = "nbk_000000000000_" + "x" * 43
        users.grant("referrer", tenant="default", patient_id="P-OWN")
        world = World(client, archive, keys, {}, tmp)
        for name, patient, key in (
            ("own", "P-OWN", ADMIN),
            ("other_patient", "P-OTHER", ADMIN),
            ("other_tenant", "P-OWN", keys["other-admin"]),
        ):
            path, study = world.make(patient)
            world.store(key, path)
            world.studies[name] = study
        # The pixel data's bulk path, from the metadata as an admin sees it.
        meta = client.get(
            f"/dicom-web/studies/{world.studies['own'].study}/metadata",
            headers=world.headers("admin"),
        ).json()
        uri = json.dumps(meta)
        match = re.search(r"/bulk/([0-9A-F/]+)\"", uri)
        assert match, uri[:400]
        for study in world.studies.values():
            study.bulk = match.group(1)
        yield world


def test_every_route_has_a_rule(world: World) -> None:
    missing = [
        (path, method)
        for path, method in _routes(world.client.app)
        if path not in PUBLIC_PATHS and (path, method) not in RULES
    ]
    assert missing == [], f"routes without an authorization rule in RULES: {missing}"


def _url(path: str, study: Study) -> str:
    filled = (
        path.replace("{study}", study.study)
        .replace("{series}", study.series)
        .replace("{instance}", study.instance)
        .replace("{frames}", "1")
        .replace("{path:path}", study.bulk)
    )
    if filled == "/wado":
        filled += (
            f"?requestType=WADO&studyUID={study.study}&seriesUID={study.series}"
            f"&objectUID={study.instance}&contentType=application/dicom"
        )
    elif "{" not in path and path.startswith("/dicom-web/") and path.count("/") == 2:
        filled += f"?StudyInstanceUID={study.study}"  # /studies, /series, /instances
    return filled


def _is_query(path: str, method: str) -> bool:
    return method == "GET" and path.rstrip("}").endswith(("/studies", "/series", "/instances"))


CALLERS = ["anonymous", "expired", "unknown", *CAN, "other-admin"]


def _visible(who: str, target: str) -> bool:
    if who == "other-admin":
        return target == "other_tenant"
    if target == "other_tenant":
        return False
    return target == "own" or who not in GRANTED_ONLY


@pytest.mark.parametrize("who", CALLERS)
def test_authorization_matrix(world: World, who: str) -> None:
    failures = []
    for path, method in _routes(world.client.app):
        need = RULES.get((path, method))
        if need in (None, "login", "any", "public") or path in PUBLIC_PATHS:
            continue
        if need == "page":
            response = world.client.get(path, headers=world.headers(who), follow_redirects=False)
            signed_out = who in ("anonymous", "expired", "unknown")
            location = response.headers.get("location", "")
            if signed_out and not (
                response.status_code == 303 and location.startswith("/ui/login")
            ):
                failures.append(f"GET {path}: {response.status_code}, expected 303 to sign-in")
            if not signed_out and response.status_code != 200:
                failures.append(f"GET {path}: {response.status_code}, expected 200")
            continue
        # The audit log names no study in its path: one request tells.
        targets = ("own",) if need == "audit" else ("own", "other_patient", "other_tenant")
        for target in targets:
            # A store goes to the caller's own tenant whatever the UIDs: only the caller's own
            # study is a meaningful target (storing under another tenant's UID would create a
            # study of that UID in the caller's tenant, which is right, but blurs the matrix).
            mine = "other_tenant" if who == "other-admin" else "own"
            if method == "POST" and target != mine:
                continue
            study = world.studies[target]
            role = "admin" if who == "other-admin" else who
            if method == "DELETE":
                study = _disposable(world, target)
            url = _url(path, study)
            if method == "POST":
                response = _post(world, who, url, study)
            else:
                response = world.client.request(method, url, headers=world.headers(who))
            status = response.status_code
            if who in ("anonymous", "expired", "unknown"):
                expected = "401"
                ok = status == 401 and "www-authenticate" in response.headers
            elif need not in CAN[role] or (need == "audit" and who == "other-admin"):
                expected = "403"
                ok = status == 403
            elif method != "POST" and not _visible(who, target):
                if _is_query(path, method):
                    expected = "200 []"
                    ok = status == 200 and response.json() == []
                else:
                    expected = "404"
                    ok = status == 404
            else:
                expected = "2xx"
                ok = 200 <= status < 300
                if ok and _is_query(path, method):
                    expected, ok = "2xx, 1 match", len(response.json()) >= 1
            if not ok:
                failures.append(f"{method} {path} [{target}]: {status}, expected {expected}")
    assert failures == [], "\n".join(failures)


def _disposable(world: World, target: str) -> Study:
    """A fresh study to delete, in the target's tenant and patient."""
    patient = "P-OTHER" if target == "other_patient" else "P-OWN"
    key = world.keys["other-admin"] if target == "other_tenant" else ADMIN
    path, study = world.make(patient)
    world.store(key, path)
    return study


def _post(world: World, who: str, url: str, study: Study) -> object:
    path, _ = world.make(study.patient, study_uid=study.study)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n"
    return world.client.post(
        url,
        content=body,
        headers={
            **world.headers(who),
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )


def test_out_of_scope_is_indistinguishable_from_absent(world: World) -> None:
    """Same status and same reason (UIDs aside) for a study outside the scope and for one that
    does not exist."""
    hidden = world.studies["other_patient"]
    absent = Study("1.2.3.999", "1.2.3.999.1", "1.2.3.999.1.1", "P-NONE", hidden.bulk)
    for suffix in ("", "/metadata", "/series/{series}/instances/{instance}/frames/1"):
        answers = []
        for study in (hidden, absent):
            url = _url(_STUDY + suffix, study)
            response = world.client.get(url, headers=world.headers("referrer"))
            reason = response.json()["reason"]
            for uid in (study.instance, study.series, study.study):  # longest first
                reason = reason.replace(uid, "<uid>")
            answers.append((response.status_code, reason))
        assert answers[0] == answers[1]
        assert answers[0][0] == 404


def test_uid_guessing_finds_nothing_outside_scope(world: World) -> None:
    """A referrer guessing UIDs (neighbours of known ones, wildcards, other patients' IDs)
    through WADO-RS, metadata and QIDO-RS sees only the granted patient."""
    own, other, foreign = (world.studies[k] for k in ("own", "other_patient", "other_tenant"))
    headers = world.headers("referrer")

    def bump(uid: str, by: int) -> str:
        head, _, last = uid.rpartition(".")
        return f"{head}.{int(last) + by}"

    guesses = [bump(s.study, d) for s in (own, other, foreign) for d in (-1, 1)]
    guesses += [other.study, foreign.study]
    for study in guesses:
        for suffix in ("", "/metadata", "/series", "/instances"):
            response = world.client.get(f"/dicom-web/studies/{study}{suffix}", headers=headers)
            assert response.status_code in (404, 200), response.text
            if response.status_code == 200:
                assert response.json() == [], f"{study}{suffix}"
    # Another study's series or instance under the granted study's path.
    for url in (
        f"/dicom-web/studies/{own.study}/series/{other.series}",
        f"/dicom-web/studies/{own.study}/series/{other.series}/instances/{other.instance}",
        f"/dicom-web/studies/{own.study}/series/{foreign.series}/metadata",
        f"/dicom-web/studies/{other.study}/series/{other.series}/instances/{other.instance}"
        "/frames/1",
    ):
        assert world.client.get(url, headers=headers).status_code == 404, url
    checked = 0
    for level in ("studies", "series", "instances"):
        for params in (
            {"PatientID": "*"},
            {"PatientName": "*"},
            {"PatientID": other.patient},
            {"SOPInstanceUID": other.instance},
            {"SeriesInstanceUID": foreign.series},
            {"StudyInstanceUID": f"{other.study},{foreign.study}"},
            {},
        ):
            params = {**params, "includefield": "PatientID"}
            response = world.client.get(f"/dicom-web/{level}", params=params, headers=headers)
            if response.status_code == 400:
                continue  # not a matching key at this level (e.g. SOPInstanceUID for studies)
            assert response.status_code == 200, response.text
            found = response.json()
            checked += 1
            studies = {item["0020000D"]["Value"][0] for item in found}
            patients = {item["00100020"]["Value"][0] for item in found}
            # Only the granted patient, and of the default tenant (P-OWN exists in both).
            assert patients <= {"P-OWN"}, (level, params, patients)
            assert not studies & {other.study, foreign.study}, (level, params)
    assert checked >= 15, "most guesses must be valid queries, or the test proves little"
    wado = world.client.get(
        "/wado",
        params={
            "requestType": "WADO",
            "studyUID": other.study,
            "seriesUID": other.series,
            "objectUID": other.instance,
        },
        headers=headers,
    )
    assert wado.status_code == 404


def test_tenant_admin_sees_only_its_tenant(world: World) -> None:
    found = world.client.get("/dicom-web/studies", headers=world.headers("other-admin")).json()
    theirs = {item["0020000D"]["Value"][0] for item in found}
    assert world.studies["other_tenant"].study in theirs
    assert not theirs & {world.studies["own"].study, world.studies["other_patient"].study}
    mine = world.client.get("/dicom-web/studies", headers=world.headers("admin")).json()
    assert world.studies["other_tenant"].study not in {i["0020000D"]["Value"][0] for i in mine}


def test_researcher_is_told_why(world: World) -> None:
    response = world.client.get("/dicom-web/studies", headers=world.headers("researcher"))
    assert response.status_code == 403
    assert "de-identification is not available" in response.json()["reason"]


def test_break_glass(world: World) -> None:
    """A referrer may read another patient's study in an emergency, with a reason; it is
    audited. An uploader may not use break-glass; nobody crosses tenants with it."""
    other = world.studies["other_patient"]
    url = f"/dicom-web/studies/{other.study}/metadata"
    plain = world.client.get(url, headers=world.headers("referrer"))
    assert plain.status_code == 404
    urgent = {
        **world.headers("referrer"),
        "X-Nubis-Break-Glass": "trauma bay 2, patient unconscious",
    }
    assert world.client.get(url, headers=urgent).status_code == 200
    foreign = world.studies["other_tenant"]
    assert (
        world.client.get(f"/dicom-web/studies/{foreign.study}/metadata", headers=urgent).status_code
        == 404
    )
    denied = {**world.headers("uploader"), "X-Nubis-Break-Glass": "please"}
    assert world.client.get(url, headers=denied).status_code == 403
    records = [r.event_dict for r in world.archive.audit.scan(0, 100000)]
    reasons = [r.get("break_glass_reason") for r in records]
    assert "trauma bay 2, patient unconscious" in reasons
    assert any(
        r["event_id"]["code"] == "110113"
        and any(t["code"] == "110127" for t in r.get("event_types", []))
        for r in records
    ), "no Emergency Override Started record"


def test_refusals_and_failed_logins_are_audited(world: World) -> None:
    before = world.archive.audit.head()[0]
    world.client.get("/dicom-web/studies", headers=world.headers("auditor"))
    world.client.get("/dicom-web/studies", headers=world.headers("unknown"))
    records = [r.event_dict for r in world.archive.audit.scan(before, 100)]
    codes = [r["event_id"]["code"] for r in records]
    assert "110113" in codes  # Security Alert: use of restricted function (the auditor)
    assert "110114" in codes  # User Authentication, failed (the unknown key)


def test_login_issues_a_key_once(world: World) -> None:
    world.archive.users.add_user(
        "dr.who", tenant="default", roles="radiologist", password="correct horse battery"
    )
    wrong = world.client.post("/-/login", auth=("dr.who", "wrong password!"))
    assert wrong.status_code == 401
    response = world.client.post("/-/login", auth=("dr.who", "correct horse battery"))
    assert response.status_code == 200, response.text
    key = response.json()["api_key"]
    assert response.headers["cache-control"] == "no-store"
    who = world.client.get("/-/whoami", headers={"Authorization": f"Bearer {key}"}).json()
    assert who == {
        "id": "dr.who",
        "tenant": "default",
        "roles": ["radiologist"],
        "auth_method": "apikey",
    }
    # Basic on every request works too; an API key cannot mint further keys.
    assert (
        world.client.get("/dicom-web/studies", auth=("dr.who", "correct horse battery")).status_code
        == 200
    )
    assert (
        world.client.post("/-/login", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    )
    # Revoked: refused at once.
    key_id = response.json()["key_id"]
    world.archive.users.revoke_api_key(key_id)
    assert (
        world.client.get("/-/whoami", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    )
    # Only the hash is stored.
    import sqlite3

    db = sqlite3.connect(world.archive.settings.data_dir / "index.sqlite")
    stored = [row[0] for row in db.execute("SELECT key_hash FROM api_keys")]
    db.close()
    assert key not in stored and all(len(h) == 64 for h in stored)
