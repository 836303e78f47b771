"""Authorization matrix generated from the route table, and UID guessing (issue 4).

Every DICOMweb route and method is requested by every kind of caller (anonymous, expired key,
unknown key, each built-in role, an admin of another tenant, and the browser sessions of two
share links of the "own" study, view-only and view-and-download) on three studies: one the
caller may see ("own": patient P-OWN, granted to the referrer), another patient's study of the
same tenant, and a study of another tenant. A route added without a rule in ``RULES`` fails
``test_every_route_has_a_rule``, so nothing new ships unguarded.

The archive runs in-process (Starlette's TestClient) with the real services, index, blob store
and audit trail: the same code as ``nubis serve`` without the subprocess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from integration import in_process_archive
from nubis.archive import Archive
from nubis.security.policy import Principal
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
):
    RULES[(_path, "GET")] = "read"
# Whole objects leave: WADO-RS instances, and WADO-URI as application/dicom (as _url asks).
RULES[("/wado", "GET")] = "download"
for _resource in (_STUDY, _SERIES, _INSTANCE):
    RULES[(_resource, "GET")] = "download"
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
# The researcher's de-identified view (docs/research.md): researchers who are members of the
# project, reading by the remapped UIDs the view hands out; every other role 403.
_PROJECT = "/projects/{project}/dicom-web"
for (_path, _method), _need in list(RULES.items()):
    if (
        _path.startswith("/dicom-web/")
        and _method == "GET"
        and _need in ("read", "download")
        and not _path.endswith("/bulk/{path:path}")
    ):
        RULES[(_PROJECT + _path.removeprefix("/dicom-web"), "GET")] = "research"
# The web face of a research project: its study list and its viewer, for members.
RULES[("/ui/projects/{project}", "GET")] = "research-page"
RULES[("/ui/projects/{project}/studies/{study}/view", "GET")] = "research-page"
# The Worklist Service (UPS-RS, docs/worklists.md): handing out and performing work needs the
# worklist action; reading and watching workitems is a read, scoped like studies.
_WORKITEM = "/dicom-web/workitems/{workitem}"
for _path, _method, _need in (
    ("/dicom-web/workitems", "POST", "worklist"),
    ("/dicom-web/workitems", "GET", "read"),
    (_WORKITEM, "GET", "read"),
    (_WORKITEM, "POST", "worklist"),
    (_WORKITEM + "/state", "PUT", "worklist"),
    (_WORKITEM + "/cancelrequest", "POST", "worklist"),
    (_WORKITEM + "/subscribers", "GET", "read"),
    (_WORKITEM + "/subscribers/{aetitle}", "POST", "read"),
    (_WORKITEM + "/subscribers/{aetitle}", "DELETE", "read"),
    (_WORKITEM + "/subscribers/{aetitle}/suspend", "POST", "read"),
):
    RULES[(_path, _method)] = f"ups {_need}"
# Its event channel, a WebSocket (method "WEBSOCKET" here): a read, by credentials headers only.
RULES[("/dicom-web/ws/subscribers/{aetitle}", "WEBSOCKET")] = "ups-channel"
RULES[("/-/login", "POST")] = "login"
RULES[("/-/whoami", "GET")] = "any"
# The audit log (HIPAA 164.312(b)): archive-wide, so for the home tenant's auditors and admins.
RULES[("/audit/records", "GET")] = "audit"
RULES[("/audit/verify", "GET")] = "audit"
# Federated statistics (docs/analytics.md): counts with small cells suppressed, for admins and
# researchers, each of its own tenant.
RULES[("/research/aggregate", "GET")] = "aggregate"
# Corrections of patient and study attributes (docs/corrections.md) and studies held in
# quarantine (docs/security.md): each tenant's admins.
for _path, _method in (
    ("/corrections", "GET"),
    ("/corrections", "POST"),
    ("/corrections/{correction_id:int}/undo", "POST"),
    ("/quarantine", "GET"),
    ("/quarantine/{study}/release", "POST"),
    # Legal holds (docs/retention.md).
    ("/legal-holds", "GET"),
    ("/legal-holds", "POST"),
    ("/legal-holds/{hold_id:int}/release", "POST"),
    # A crypto-shred (docs/security.md), also how a primary's replication shreds at its replica.
    ("/keys/shred-patient", "POST"),
    ("/webhooks", "GET"),
    ("/webhooks", "POST"),
    ("/webhooks/{name}", "DELETE"),
    ("/webhooks/{name}/deliveries", "GET"),
    ("/webhooks/{name}/replay", "POST"),
):
    RULES[(_path, _method)] = "admin-api"
# The change feed (docs/events.md): every role that reads, each seeing its own scope.
RULES[("/changefeed", "GET")] = "feed"
RULES[("/changefeed/latest", "GET")] = "feed"
# The web face: the entry and sign-in are open to anyone; a "page" shows a signed-out browser
# the sign-in page (303) and any signed-in role the page, whose content the services scope.
RULES[("/", "GET")] = "public"
RULES[("/ui/login", "GET")] = "public"
RULES[("/ui/login", "POST")] = "public"
RULES[("/ui/logout", "POST")] = "any"
# Share links: the entry is open to anyone holding a token (tests/integration/test_shares.py);
# "/share/" is the landing page of a link's own session, absent (404) for everyone else.
RULES[("/share/{token}", "GET")] = "public"
RULES[("/share/{token}", "POST")] = "public"
RULES[("/share/", "GET")] = "share-session"
# A de-identified link's session (docs/research.md): its de-identified DICOMweb, viewer and ZIP,
# read through the research view; every other caller refused (404 for a researcher, who may
# de-identify but holds no link).
for (_path, _method), _need in list(RULES.items()):
    if _path.startswith(_PROJECT + "/"):
        RULES[("/share/dicom-web" + _path.removeprefix(_PROJECT), _method)] = "share-deid"
RULES[("/share/studies/{study}/view", "GET")] = "share-deid"
RULES[("/share/studies/{study}/download", "GET")] = "share-deid"
# Making and managing links and user grants: roles that may share (their whole tenant); a
# signed-out browser is sent to sign in, a study of another tenant is absent.
for _path, _method in (
    ("/ui/shares", "GET"),
    ("/ui/shares/{link}/revoke", "POST"),
    ("/ui/studies/{study}/share", "GET"),
    ("/ui/studies/{study}/share", "POST"),
    ("/ui/studies/{study}/share/users", "POST"),
):
    RULES[(_path, _method)] = "share"
# The admin pages: "<scope> page" answers 200 to the roles of ADMINISTERS[scope] and 403 to the
# rest; a "<scope> form" reaches its handler for them (200, 303 back to a page, or 400 for the
# empty form the matrix posts) and is 403 for the rest. Signed out, both send the browser to
# sign in. Jobs, storage and DIMSE peers are the archive's: the home tenant's admins only.
ADMIN_PAGES = {
    "/ui/admin/": "users",
    "/ui/admin/users": "users",
    "/ui/admin/users/{name}": "users",
    "/ui/admin/jobs": "archive",
    "/ui/admin/jobs/progress": "archive",
    "/ui/admin/storage": "archive",
    "/ui/admin/peers": "archive",
    "/ui/admin/audit": "audit",
    "/ui/admin/audit/verification": "audit",
}
ADMIN_FORMS = {
    "/ui/admin/users": "users",
    "/ui/admin/users/{name}/roles": "users",
    "/ui/admin/users/{name}/password": "users",
    "/ui/admin/users/{name}/remove": "users",
    "/ui/admin/users/{name}/keys": "users",
    "/ui/admin/keys/{key_id}/revoke": "users",
    "/ui/admin/jobs": "archive",
    "/ui/admin/jobs/{job_id:int}/cancel": "archive",
    "/ui/admin/peers": "archive",
    "/ui/admin/peers/remove": "archive",
    "/ui/admin/audit": "audit",
    "/ui/admin/audit/verify": "audit",
}
ADMINISTERS = {
    "users": {"admin", "other-admin"},  # each its own tenant's users
    "archive": {"admin"},
    "audit": {"admin", "auditor"},
}
for _path, _scope in ADMIN_PAGES.items():
    RULES[(_path, "GET")] = f"{_scope} page"
for _path, _scope in ADMIN_FORMS.items():
    RULES[(_path, "POST")] = f"{_scope} form"
# A "study-page" shows one study: signed out, the sign-in page (303); a role that may not read,
# 403; a study outside the caller's scope, a 404 page exactly like an absent one; else 200.
RULES[("/ui/studies/{study}/view", "GET")] = "study-page"
RULES[("/ui/viewer/dictionary.json", "GET")] = "page"
RULES[("/ui/upload", "GET")] = "page"
# The study browser: a QIDO-RS study search (403 for roles that may not read). Its search form
# answers a redirect to the results, whatever the role (the results page decides).
RULES[("/ui/", "GET")] = "ui-read"
RULES[("/ui/", "POST")] = "ui-form"
# A study's pages are its DICOMweb reads: 403 without read, 404 outside the scope.
for _path in ("/ui/studies/{study}", "/ui/studies/{study}/download", "/ui/studies/{study}/delete"):
    RULES[(_path, "GET")] = "ui-study"
RULES[("/ui/studies/{study}/delete", "POST")] = "ui-delete"
# A send is queued for any study (its job finds the study, or fails as not found, like a
# retrieval); only roles that may read may ask. A send's page is its requester's alone.
RULES[("/ui/studies/{study}/send", "POST")] = "ui-send"
RULES[("/ui/studies/{study}/sends/{job}", "GET")] = "ui-own-job"
# Signing in with the OIDC provider is open to anyone, as the password form is.
RULES[("/ui/login/oidc", "GET")] = "public"
RULES[("/ui/oidc/callback", "GET")] = "public"
# OHIF's own files hold no patient data and are served to anyone; its pages send a signed-out
# browser to sign in, and its data comes over DICOMweb (tests/browser/test_ohif.py).
# The archive's metrics (issue 15): monitors and the home tenant's admins.
RULES[("/metrics", "GET")] = "monitor"
# FHIR ImagingStudy: a query like QIDO-RS (a search lists what is visible; a read of a study
# outside the scope is 404).
RULES[("/fhir/ImagingStudy", "GET")] = "fhir-search"
RULES[("/fhir/ImagingStudy/{id}", "GET")] = "read"
RULES[("/ohif", "GET")] = "public"
RULES[("/ohif/{path:path}", "GET")] = "public"
RULES[("/ohif/{path:path}", "HEAD")] = "public"

# What each role may do, written out independently of nubis.security.policy. "share-view",
# "share-download" and "share-deidentified" are the sessions of share links (internal roles,
# never a user's); the last one's link is de-identified as the "matrix" project, with download.
CAN = {
    "admin": {"read", "download", "write", "delete", "audit", "share", "worklist", "aggregate"},
    "radiologist": {"read", "download", "write", "share", "worklist"},
    "referrer": {"read", "download"},
    "uploader": {"write"},
    "modality": {"write"},
    "researcher": {"deidentify", "aggregate"},
    "auditor": {"audit"},
    "monitor": {"monitor"},
    "share-view": {"read"},
    "share-download": {"read", "download"},
    "share-deidentified": {"deidentify-share"},
}
GRANTED_ONLY = {"referrer", "share-view", "share-download", "share-deidentified"}
SHARE_CALLERS = ("share-view", "share-download", "share-deidentified")


def _routes(app: object) -> Iterator[tuple[str, str]]:
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount):
            for sub in route.routes:
                if isinstance(sub, WebSocketRoute):
                    yield route.path + sub.path, "WEBSOCKET"
                    continue
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
    link_id: str = ""  # a share link of the radiologist's, for the revoke route
    # A workitem per target (its patient and study those of the target's study).
    workitems: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str) -> dict[str, str]:
        if who == "anonymous":
            return {}
        if who in SHARE_CALLERS:
            # A share link's browser session: the cookie, and its CSRF token for scripts.
            session = self.archive.sessions.find(self.keys[who])
            assert session is not None, f"the {who} session ended"
            return {
                "Cookie": f"nubis_session={self.keys[who]}",
                "X-CSRF-Token": session.csrf_token,
            }
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
    archive = in_process_archive(tmp / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        users = archive.users
        keys = {"admin": ADMIN}
        for role in CAN:
            if role == "admin" or role in SHARE_CALLERS:
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
        # Users a study can be shared with (referrers), one per tenant; not callers here.
        users.add_user("grantee-default", tenant="default", roles="referrer")
        users.add_user("grantee-other", tenant="other", roles="referrer")
        sharing = archive.sharing
        radiologist = Principal("radiologist", "default", frozenset({"radiologist"}))
        own = world.studies["own"].study
        for who, download in (("share-view", False), ("share-download", True)):
            _, token = sharing.create(radiologist, own, can_download=download)
            keys[who] = sharing.open(token, pin="", peer="127.0.0.1").session_token
        world.link_id = sharing.create(radiologist, own)[0].id
        # A research project of the "own" study, the researcher its member; its profile
        # suspects no object of burned-in text, so the matrix's secondary captures are served.
        archive.research.create(
            Principal("admin", "default", frozenset({"admin"})),
            "matrix",
            RESEARCH_PROFILE,
            study_uids=(own,),
            members=("researcher",),
        )
        _, token = sharing.create(radiologist, own, can_download=True, deid_project="matrix")
        keys["share-deidentified"] = sharing.open(token, pin="", peer="127.0.0.1").session_token
        for name, tenant in (
            ("own", "default"),
            ("other_patient", "default"),
            ("other_tenant", "other"),
        ):
            scheduler = Principal("scheduler", tenant, frozenset({"admin"}))
            study = world.studies[name]
            world.workitems[name] = archive.worklist.create(
                scheduler, _workitem(study.patient, study.study), generate_uid()
            )
        yield world


RESEARCH_PROFILE = """
name = "matrix"
version = 1
[burned_in]
suspect_modalities = []
suspect_sop_classes = []
"""


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
        .replace("{id}", study.study)
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


SIGNED_OUT = ("anonymous", "expired", "unknown")


def _share_route(world: World, who: str, path: str, method: str) -> list[str]:
    """A page or form of making and managing share links, for one caller (see RULES)."""
    failures = []
    role = "admin" if who == "other-admin" else who
    tenant = "other" if who == "other-admin" else "default"
    targets = ("own", "other_patient", "other_tenant") if "{study}" in path else ("",)
    for target in targets:
        url = path.replace("{link}", world.link_id)
        if target:
            url = url.replace("{study}", world.studies[target].study)
        data = None
        if path.endswith("/share/users"):
            data = {"user": f"grantee-{tenant}"}
        elif method == "POST" and "{study}" in path:
            data = {"days": "1", "access": "view", "note": "matrix"}
        elif method == "POST":
            data = {"next": "/ui/shares"}
        response = world.client.request(
            method, url, headers=world.headers(who), data=data, follow_redirects=False
        )
        status = response.status_code
        location = response.headers.get("location", "")
        if who in SIGNED_OUT:
            expected, ok = "303 to sign-in", status == 303 and location.startswith("/ui/login")
        elif "share" not in CAN[role]:
            expected, ok = "403", status == 403
        elif target and not _visible(who, target):
            expected, ok = "404", status == 404
        elif "{link}" in path and who == "other-admin":
            expected, ok = "404 (a link of another tenant)", status == 404
        else:
            expected, ok = "2xx or 303", 200 <= status < 300 or status == 303
        if not ok:
            failures.append(f"{method} {path} [{target or '-'}]: {status}, expected {expected}")
    return failures


@pytest.mark.parametrize("who", CALLERS)
def test_authorization_matrix(world: World, who: str) -> None:
    failures = []
    for path, method in _routes(world.client.app):
        need = RULES.get((path, method))
        if need in (None, "login", "any", "public") or path in PUBLIC_PATHS:
            continue
        if need == "share":
            failures += _share_route(world, who, path, method)
            continue
        if need == "share-session":
            response = world.client.get(path, headers=world.headers(who), follow_redirects=False)
            expected = 200 if who in SHARE_CALLERS else 404
            if response.status_code != expected:
                failures.append(f"GET {path}: {response.status_code}, expected {expected}")
            continue
        if need.endswith((" page", " form")):
            failures += _admin_page(world, who, path, method, need)
            continue
        if need == "page":
            response = world.client.get(path, headers=world.headers(who), follow_redirects=False)
            signed_out = who in SIGNED_OUT
            location = response.headers.get("location", "")
            if signed_out and not (
                response.status_code == 303 and location.startswith("/ui/login")
            ):
                failures.append(f"GET {path}: {response.status_code}, expected 303 to sign-in")
            if not signed_out and response.status_code != 200:
                failures.append(f"GET {path}: {response.status_code}, expected 200")
            continue
        if need == "study-page":
            failures += _study_page_failures(world, who, path)
            continue
        if need == "monitor":
            response = world.client.get(path, headers=world.headers(who))
            expected = 401 if who in SIGNED_OUT else 200 if who in ("admin", "monitor") else 403
            if response.status_code != expected:
                failures.append(f"GET {path}: {response.status_code}, expected {expected}")
            continue
        if need == "fhir-search":
            failures += _fhir_search(world, who, path)
            continue
        if need == "admin-api":
            failures += _admin_api_route(world, who, path, method)
            continue
        if need == "research":
            failures += _research_route(world, who, path)
            continue
        if need == "share-deid":
            failures += _share_deid_route(world, who, path)
            continue
        if need == "research-page":
            failures += _research_page(world, who, path)
            continue
        if need.startswith("ups "):
            failures += _ups_route(world, who, path, method, need.split()[1])
            continue
        if need == "ups-channel":
            failures += _ups_channel(world, who, path)
            continue
        if need == "aggregate":
            failures += _aggregate_route(world, who, path)
            continue
        if need == "feed":
            failures += _feed_route(world, who, path)
            continue
        if need.startswith("ui-"):
            failures += _ui_rule(world, who, path, method, need)
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
            if who in SIGNED_OUT:
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


def _remapped(world: World, study: Study) -> Study:
    """``study`` named by the UIDs the "matrix" project's view hands out."""
    research = world.archive.research
    remap = research.key_of(
        research.show(Principal("admin", "default", frozenset({"admin"})), "matrix")
    ).pseudonyms()
    return Study(
        remap.uid(study.study),
        remap.uid(study.series),
        remap.uid(study.instance),
        study.patient,
        study.bulk,
    )


def _research_route(world: World, who: str, path: str) -> list[str]:
    """A route of the researcher's view: 401 signed out, 403 but for researchers; for the
    researcher, the project's study answers de-identified (nothing of the stored object's
    identifying values in it) and every other study as absent."""
    failures = []
    role = "admin" if who == "other-admin" else who
    for target in ("own", "other_patient", "other_tenant"):
        stored = world.studies[target]
        remapped = _remapped(world, stored)
        url = _url(path, remapped).replace("{project}", "matrix")
        if path.count("/") == 4:  # /projects/{project}/dicom-web/studies, /series, /instances
            url += f"?StudyInstanceUID={remapped.study}"
        response = world.client.get(url, headers=world.headers(who))
        status = response.status_code
        leaked = [
            v
            for v in (stored.patient, "Doe", stored.study, stored.series, stored.instance)
            if v in response.text
        ]
        if who in SIGNED_OUT:
            expected, ok = "401", status == 401
        elif who == "share-deidentified":
            # May de-identify, but only its link: no project is its own.
            expected, ok = "404", status == 404
        elif "deidentify" not in CAN[role]:
            expected, ok = "403", status == 403
        elif target != "own":
            if _is_query(path, "GET"):
                expected, ok = "200 []", status == 200 and response.json() == []
            else:
                expected, ok = "404", status == 404
        elif _is_query(path, "GET"):
            expected, ok = "2xx, 1 match", status == 200 and len(response.json()) >= 1
        else:
            expected, ok = "2xx", 200 <= status < 300
        if leaked:
            failures.append(f"GET {path} [{target}]: identifying values {leaked} in the answer")
        if not ok:
            failures.append(f"GET {path} [{target}]: {status}, expected {expected}")
    return failures


def _share_deid_route(world: World, who: str, path: str) -> list[str]:
    """A route of a de-identified link's session: for that session, its study de-identified
    (the "matrix" project's remapped UIDs, nothing identifying in the answer) and every other
    study absent; a researcher 404 (no link); a browser signed out sent to sign in (the
    viewer), 401 (DICOMweb) or 404 (the ZIP, a share session's page); every other role 403
    (another link's session: 403 on the ZIP too; an account: 404 there, not a share session)."""
    failures = []
    role = "admin" if who == "other-admin" else who
    page = path.startswith("/share/studies/")
    for target in ("own", "other_patient", "other_tenant"):
        stored = world.studies[target]
        remapped = _remapped(world, stored)
        url = _url(path, remapped)
        if path.count("/") == 3:  # /share/dicom-web/studies, /series, /instances
            url += f"?StudyInstanceUID={remapped.study}"
        response = world.client.get(url, headers=world.headers(who), follow_redirects=False)
        status = response.status_code
        leaked = [
            v
            for v in (stored.patient, "Doe", stored.study, stored.series, stored.instance)
            if v in response.text
        ]
        if path.endswith("/download") and who not in SHARE_CALLERS:
            expected, ok = "404", status == 404
        elif who in SIGNED_OUT:
            if page:
                ok = status == 303 and response.headers["location"].startswith("/ui/login")
                expected = "303 to sign-in"
            else:
                expected, ok = "401", status == 401
        elif role == "researcher":
            expected, ok = "404", status == 404
        elif "deidentify-share" not in CAN[role]:
            expected, ok = "403", status == 403
        elif target != "own":
            if _is_query(path, "GET"):
                expected, ok = "200 []", status == 200 and response.json() == []
            else:
                expected, ok = "404", status == 404
        elif _is_query(path, "GET"):
            expected, ok = "2xx, 1 match", status == 200 and len(response.json()) >= 1
        else:
            expected, ok = "2xx", 200 <= status < 300
        if leaked:
            failures.append(f"GET {path} [{target}]: identifying values {leaked} in the answer")
        if not ok:
            failures.append(f"GET {path} [{target}]: {status}, expected {expected}")
    return failures


def _aggregate_route(world: World, who: str, path: str) -> list[str]:
    """An aggregate question: 401 signed out, 403 but for admins and researchers, and for
    them counts that name no study and no patient."""
    response = world.client.get(f"{path}?kind=studies_by_modality_year", headers=world.headers(who))
    role = "admin" if who == "other-admin" else who
    status = response.status_code
    if who in SIGNED_OUT:
        expected, ok = "401", status == 401
    elif "aggregate" not in CAN.get(role, set()):
        expected, ok = "403", status == 403
    else:
        named = [v for s in world.studies.values() for v in (s.study, s.patient)]
        expected = "200, counts naming no study or patient"
        ok = status == 200 and not any(v in response.text for v in named)
    return [] if ok else [f"GET {path}: {status}, expected {expected}"]


def _fhir_search(world: World, who: str, path: str) -> list[str]:
    """A FHIR search for each study's patient: 401 signed out, 403 without read, else a
    Bundle holding the study exactly when the caller may see it."""
    failures = []
    role = "admin" if who == "other-admin" else who
    for target, study in world.studies.items():
        response = world.client.get(
            path, params={"patient": study.patient}, headers=world.headers(who)
        )
        status = response.status_code
        if who in SIGNED_OUT:
            expected, ok = "401", status == 401
        elif "read" not in CAN[role]:
            expected, ok = "403", status == 403
        else:
            found = {e["resource"]["id"] for e in response.json().get("entry", [])}
            visible = _visible(who, target)
            expected = "200 with the study" if visible else "200 without it"
            ok = status == 200 and (study.study in found) == visible
        if not ok:
            failures.append(f"GET {path} [{target}]: {status}, expected {expected}")
    return failures


def _research_page(world: World, who: str, path: str) -> list[str]:
    """A page of a research project: signed out, the sign-in page; 403 but for researchers;
    for the member, the project's page and its study's viewer, other studies absent."""
    failures = []
    role = "admin" if who == "other-admin" else who
    targets = ("own", "other_patient", "other_tenant") if "{study}" in path else ("own",)
    for target in targets:
        stored = world.studies[target]
        url = _url(path, _remapped(world, stored)).replace("{project}", "matrix")
        response = world.client.get(url, headers=world.headers(who), follow_redirects=False)
        status = response.status_code
        location = response.headers.get("location", "")
        if who in SIGNED_OUT:
            expected, ok = "303 to sign-in", status == 303 and location.startswith("/ui/login")
        elif who == "share-deidentified":
            expected, ok = "404", status == 404
        elif "deidentify" not in CAN[role]:
            expected, ok = "403", status == 403
        elif target != "own":
            expected, ok = "404", status == 404
        else:
            expected, ok = "200", status == 200
        if stored.patient in response.text or stored.study in response.text:
            failures.append(f"GET {path} [{target}]: an identifying value in the page")
        if not ok:
            failures.append(f"GET {path} [{target}]: {status}, expected {expected}")
    return failures


def _workitem(patient: str, study: str) -> dict[str, object]:
    return {
        "00100020": {"vr": "LO", "Value": [patient]},
        "0020000D": {"vr": "UI", "Value": [study]},
        "00741200": {"vr": "CS", "Value": ["LOW"]},
        "00741204": {"vr": "LO", "Value": ["matrix"]},
        "00404005": {"vr": "DT", "Value": ["20260101120000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
    }


_WORKLIST = "1.2.840.10008.5.1.4.34.5"


def _ups_route(world: World, who: str, path: str, method: str, need: str) -> list[str]:
    """A UPS-RS resource for one caller: 401 signed out, 403 without the action, 404 for a
    workitem outside the scope (a search: not listed), else an answer about the request
    itself (a state change the workitem's state refuses is 400/409, still authorized)."""
    failures = []
    role = "admin" if who == "other-admin" else who
    suspend = path.endswith("/suspend")
    targets = ("own",) if "{workitem}" not in path or suspend else tuple(world.workitems)
    for target in targets:
        uid = _WORKLIST if suspend else world.workitems[target]
        url = path.replace("{workitem}", uid).replace("{aetitle}", "MATRIX")
        body: object = None
        if path == "/dicom-web/workitems" and method == "POST":
            url += f"?workitem={generate_uid()}"
            body = [_workitem("P-OWN", world.studies["own"].study)]
        elif path.endswith("/state"):
            body = [{"00741000": {"vr": "CS", "Value": ["COMPLETED"]}}]
        elif method == "POST" and path == _WORKITEM:
            body = [{"00741204": {"vr": "LO", "Value": ["matrix again"]}}]
        headers = world.headers(who)
        if body is not None:
            headers = {**headers, "Content-Type": "application/dicom+json"}
        response = world.client.request(
            method, url, headers=headers, content=None if body is None else json.dumps(body)
        )
        status = response.status_code
        if who in SIGNED_OUT:
            expected, ok = "401", status == 401
        elif need not in CAN[role]:
            expected, ok = "403", status == 403
        elif suspend and who in GRANTED_ONLY:
            expected, ok = "403 (the whole worklist)", status == 403
        elif path == "/dicom-web/workitems" and method == "GET":
            listed = (
                {i["00080018"]["Value"][0] for i in response.json()} if status == 200 else set()
            )
            mine = {n for n, u in world.workitems.items() if u in listed}
            want = {n for n in world.workitems if _visible(who, n)}
            expected, ok = f"200 listing {sorted(want)}", status == 200 and mine == want
        elif "{workitem}" in path and not suspend and not _visible(who, target):
            expected, ok = "404", status == 404
        else:
            expected = "an answer past authorization"
            ok = status < 500 and status not in (401, 403) and (suspend or status != 404)
        if not ok:
            failures.append(f"{method} {path} [{target}]: {status}, expected {expected}")
    return failures


def _ups_channel(world: World, who: str, path: str) -> list[str]:
    """The UPS event channel: the handshake is accepted for a caller that may read and gave
    credentials headers; refused (closed, 1008) signed out, without READ, or with a browser
    session's cookie only (cross-site WebSocket hijacking)."""
    headers = world.headers(who)
    role = "admin" if who == "other-admin" else who
    by_key = "Authorization" in headers
    want = who not in SIGNED_OUT and "read" in CAN[role] and by_key
    try:
        with world.client.websocket_connect(path.replace("{aetitle}", "MATRIX"), headers=headers):
            accepted, code = True, None
    except WebSocketDisconnect as refused:
        accepted, code = False, refused.code
    if accepted != want or (not accepted and code != 1008):
        expected = "accepted" if want else "refused with 1008"
        return [f"WEBSOCKET {path}: accepted={accepted} code={code}, expected {expected}"]
    return []


def _admin_api_route(world: World, who: str, path: str, method: str) -> list[str]:
    """The admins' JSON API (corrections, quarantine, shreds, legal holds) for one caller:
    401 signed out, 403 but for admins (before the body is read), and for admins an answer
    about the request itself: a list (200), an empty correction, shred or hold refused (400),
    the undo of a correction or the release of a hold not in its tenant, or the release of a
    study its tenant does not hold in quarantine (404)."""
    url = (
        path.replace("{correction_id:int}", "999999")
        .replace("{hold_id:int}", "999999")
        .replace("{study}", world.studies["own"].study)
    )
    # A webhook that does not exist: 404 to admins, whatever they ask of it.
    url = url.replace("{name}", "no-such-webhook")
    acts_on_one = path.endswith(("/undo", "/release")) or "{name}" in path
    body = {"reason": "matrix"} if acts_on_one else {}
    response = world.client.request(
        method, url, headers=world.headers(who), json=body if method == "POST" else None
    )
    status = response.status_code
    if who in SIGNED_OUT:
        expected, ok = "401", status == 401
    elif who not in ("admin", "other-admin"):
        expected, ok = "403", status == 403
    elif method == "GET" and not acts_on_one:
        expected, ok = "200", status == 200
    elif acts_on_one:
        expected, ok = "404", status == 404
    else:
        expected, ok = "400", status == 400
    return [] if ok else [f"{method} {path}: {status}, expected {expected}"]


def _feed_route(world: World, who: str, path: str) -> list[str]:
    """The change feed for one caller: 401 signed out, 403 for roles that may not read, else
    200 (what it lists is the caller's scope: tests/integration/test_changefeed.py)."""
    status = world.client.get(path, headers=world.headers(who)).status_code
    role = "admin" if who == "other-admin" else who
    if who in SIGNED_OUT:
        expected = 401
    elif "read" not in CAN.get(role, set()):
        expected = 403
    else:
        expected = 200
    return [] if status == expected else [f"GET {path}: {status}, expected {expected}"]


def _admin_page(world: World, who: str, path: str, method: str, need: str) -> list[str]:
    """One admin page or form for one caller (see ADMIN_PAGES); a failure, or none."""
    scope, kind = need.split()
    # The caller's own user (the admin token's user is "admin"); keys and jobs that do not
    # exist: no form of the matrix changes anything.
    url = (
        path.replace("{name}", who)
        .replace("{key_id}", "no-such-key")
        .replace("{job_id:int}", "999999")
    )
    headers = world.headers(who)
    if method == "GET":
        response = world.client.get(url, headers=headers, follow_redirects=False)
    else:
        response = world.client.post(url, data={}, headers=headers, follow_redirects=False)
    status, location = response.status_code, response.headers.get("location", "")
    if who in ("anonymous", "expired", "unknown"):
        expected, ok = "303 to sign-in", status == 303 and location.startswith("/ui/login")
    elif who not in ADMINISTERS[scope]:
        expected, ok = "403", status == 403
    elif kind == "page":
        expected, ok = "200", status == 200
    else:
        expected = "the form's handler"
        ok = status not in (401, 403) and not location.startswith("/ui/login") and status < 500
    return [] if ok else [f"{method} {path}: {status}, expected {expected}"]


def _study_page_failures(world: World, who: str, path: str) -> list[str]:
    failures = []
    role = "admin" if who == "other-admin" else who
    for target in ("own", "other_patient", "other_tenant"):
        url = _url(path, world.studies[target])
        headers = {**world.headers(who), "Accept": "text/html"}
        response = world.client.get(url, headers=headers, follow_redirects=False)
        status, kind = response.status_code, response.headers.get("content-type", "")
        if who in ("anonymous", "expired", "unknown"):
            expected = "303 to sign-in"
            location = response.headers.get("location", "")
            ok = status == 303 and location.startswith("/ui/login?next=/ui/studies/")
        elif "read" not in CAN[role]:
            expected, ok = "403 page", status == 403 and kind.startswith("text/html")
        elif not _visible(who, target):
            expected, ok = "404 page", status == 404 and kind.startswith("text/html")
        else:
            expected, ok = "200 page", status == 200 and kind.startswith("text/html")
        if not ok:
            failures.append(f"GET {path} [{target}]: {status} {kind}, expected {expected}")
    return failures


def _ui_rule(world: World, who: str, path: str, method: str, need: str) -> list[str]:
    """The web face's pages and forms: a signed-out browser is sent to sign in (303); a role
    that may not do it is refused (403); a study outside the scope is absent (404)."""
    failures = []
    signed_out = who in ("anonymous", "expired", "unknown")
    role = "admin" if who == "other-admin" else who
    action = {"ui-delete": "delete", "ui-own-job": None, "ui-form": None}.get(need, "read")
    if path.endswith("/download"):
        action = "download"  # whole objects leave as files
    per_study = "{study}" in path
    targets = ("own", "other_patient", "other_tenant") if per_study else ("own",)
    for target in targets:
        study = world.studies[target]
        if need == "ui-delete":
            study = _disposable(world, target)
        url = _url(path, study).replace("{job}", "999999")
        form = {"destination": "NOSUCHPEER"} if need == "ui-send" else {}
        if who in SHARE_CALLERS:
            # A browser session's forms carry its CSRF token (an API key's need none).
            form["csrf_token"] = world.headers(who)["X-CSRF-Token"]
        if method == "POST":
            response = world.client.post(
                url, data=form, headers=world.headers(who), follow_redirects=False
            )
        else:
            response = world.client.get(url, headers=world.headers(who), follow_redirects=False)
        status = response.status_code
        location = response.headers.get("location", "")
        if signed_out:
            expected, ok = "303 to sign-in", status == 303 and location.startswith("/ui/login")
        elif action is not None and action not in CAN[role]:
            expected, ok = "403", status == 403
        elif need == "ui-send" and who in SHARE_CALLERS:
            # A share link's session views its study; sending it elsewhere is refused.
            expected, ok = "403", status == 403
        elif need == "ui-own-job":
            expected, ok = "404", status == 404
        elif need == "ui-send":
            # No such peer: refused before any job, whatever the study.
            expected, ok = "400", status == 400
        elif per_study and not _visible(who, target):
            expected, ok = "404", status == 404
        elif need in ("ui-form", "ui-delete"):
            expected, ok = "303", status == 303
        else:
            expected, ok = "200", status == 200
        if not ok:
            failures.append(f"{method} {path} [{target}]: {status}, expected {expected}")
    return failures


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
    assert "/projects/{name}/dicom-web" in response.json()["reason"]


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
