"""Analytics (issue 14): the Parquet metadata export read by DuckDB, and federated statistics
across two sites with small-cell suppression.

Two archives run in-process (Starlette's TestClient): the real services, index and audit trail.
Site A holds a CT series of 12 instances (CHEST) and an MR series of 3 (HEAD); site B a CT
series of 10 (CHEST), an MR series of 8 (HEAD) and one CT object marked Burned In Annotation
YES (PS3.3 C.7.6.1.1.3), which a de-identified export leaves out (PS3.15 E.1.1).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset

from integration import in_process_archive
from integration.admin_site import ADMIN_TOKEN, Site
from nubis.cli.research import ask_sites, question_url
from nubis.deid.json_view import deidentify_json
from nubis.deid.profile import load_default_profile
from nubis.model.aggregates import pool
from nubis.security.authn import cli_principal
from nubis.services.metadata_export import DeidTarget
from nubis.tools import synth

PROJECT_KEY = b"analytics-test project key 0123456789"
RESEARCHER = "rita"


# Who asks, with which role and tenant; API keys rather than passwords (no hashing to wait for).
PEOPLE = {
    RESEARCHER: ("researcher", "default"),
    "boss": ("admin", "default"),
    "rad": ("radiologist", "default"),
    "eve": ("auditor", "default"),
    "otto": ("admin", "other"),
}
KEYS: dict[tuple[int, str], str] = {}  # (id of the site, user) -> API key


def _bearer(site: Site, user: str) -> str:
    return f"Bearer {KEYS[(id(site), user)]}"


def _series(modality: str, n: int, *, patient: str, body_part: str, seed: int) -> list[Dataset]:
    spec = synth.PatientSpec(patient_id=patient, patient_name=f"Patient^{patient}")
    return list(
        synth.series_datasets(
            modality,
            n_instances=n,
            rows=8,
            columns=8,
            patient=spec,
            body_part=body_part,
            seed=seed,
            accession=f"ACC{seed}",
        )
    )


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    made: dict[str, Site] = {}
    contents = {
        "a": [("CT", 12, "PA-1", "CHEST", 1), ("MR", 3, "PA-2", "HEAD", 2)],
        "b": [("CT", 10, "PB-1", "CHEST", 3), ("MR", 8, "PB-2", "HEAD", 4)],
    }
    for name, series in contents.items():
        tmp = tmp_path_factory.mktemp(f"site-{name}")
        archive = in_process_archive(tmp / "data", ADMIN_TOKEN)
        archive.prepare()
        archive.start(background=False)
        site = Site(archive, tmp)
        for user, (role, tenant) in PEOPLE.items():
            archive.users.add_user(user, tenant=tenant, roles=role)
            KEYS[(id(site), user)] = archive.users.create_api_key(user)[1]
        for modality, n, patient, body_part, seed in series:
            site.store(_series(modality, n, patient=patient, body_part=body_part, seed=seed))
        made[name] = site
    burned = _series("CT", 1, patient="PB-3", body_part="CHEST", seed=5)
    burned[0].BurnedInAnnotation = "YES"
    made["b"].store(burned)
    try:
        yield made
    finally:
        for site in made.values():
            site.archive.stop()


def _ask(site: Site, query: str, user: str = RESEARCHER) -> Any:
    with site.client() as client:
        return client.get(
            f"/research/aggregate?{query}", headers={"Authorization": _bearer(site, user)}
        )


def _cells(answer: dict[str, Any]) -> dict[tuple[str, ...], Any]:
    return {tuple(c["key"]): c["count"] for c in answer["cells"]}


def test_one_site_suppresses_cells_under_k_and_leaves_them_out_of_the_total(
    sites: dict[str, Site],
) -> None:
    head = sites["a"].head()
    response = _ask(sites["a"], "kind=instances_by_body_part")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert _cells(answer) == {("CHEST",): 12, ("HEAD",): "<10"}
    # The total cannot give the suppressed cell back by subtraction: it is over shown cells.
    assert answer["total"] == 12 and answer["suppressed_cells"] == 1
    # Recorded as a Query (PS3.15 A.5.3.10) naming the researcher and the question.
    queries = [
        r.event_dict
        for r in sites["a"].records_since(head)
        if r.event_dict["event_id"]["code"] == "110112"
    ]
    assert len(queries) == 1
    assert queries[0]["participants"][0]["user_id"] == RESEARCHER
    asked = base64.b64decode(queries[0]["objects"][0]["query"]).decode()
    assert asked == "aggregate?kind=instances_by_body_part"


def test_a_filter_narrows_the_cohort_and_histograms_bin_it(sites: dict[str, Site]) -> None:
    answer = _ask(sites["a"], "kind=slice_thickness_histogram&Modality=CT").json()
    assert _cells(answer) == {("[1,1.5)",): 12}  # synth CT slices are 1.25 mm
    answer = _ask(sites["b"], "kind=kvp_histogram&Modality=CT").json()
    assert _cells(answer) == {("[120,130)",): 11}


def test_two_sites_pool_their_counts_and_suppress_again(sites: dict[str, Site]) -> None:
    clients = {name: site.client() for name, site in sites.items()}
    urls = {"https://a.example": clients["a"], "https://b.example": clients["b"]}
    keys = {
        "https://a.example": _bearer(sites["a"], RESEARCHER),
        "https://b.example": _bearer(sites["b"], RESEARCHER),
    }

    def fetch(url: str, key: str) -> dict[str, Any]:
        site, _, rest = url.partition("/research/")
        response = urls[site].get("/research/" + rest, headers={"Authorization": key})
        assert response.status_code == 200, response.text
        return dict(response.json())

    pooled, answers = ask_sites(list(urls), keys, "instances_by_body_part", [], 10, fetch)
    assert [_cells(a) for a in answers] == [
        {("CHEST",): 12, ("HEAD",): "<10"},
        {("CHEST",): 11, ("HEAD",): "<10"},
    ]
    # 12 + 11 pooled; HEAD (3 + 8 = 11 in truth) stays suppressed: a site's suppressed cell
    # adds nothing, so the pool cannot reveal it either.
    assert _cells(pooled) == {("CHEST",): 23, ("HEAD",): "<10"}
    assert pooled["total"] == 23 and pooled["sites"] == 2
    # A pooled cell under the pool's own k is suppressed, though each site reported its part.
    stricter = pool(answers, 25)
    assert _cells(stricter) == {("CHEST",): "<25", ("HEAD",): "<25"}
    assert stricter["total"] == 0
    text = json.dumps([pooled, answers])
    for site in sites.values():
        for value in _identifying_values(site):
            assert value not in text
    assert question_url("https://a.example/", "kvp_histogram", [("Modality", "CT")]) == (
        "https://a.example/research/aggregate?kind=kvp_histogram&Modality=CT"
    )


def test_aggregates_are_for_admins_and_researchers_in_their_own_tenant(
    sites: dict[str, Site],
) -> None:
    assert _ask(sites["a"], "kind=instances_by_body_part", "boss").status_code == 200
    for user in ("rad", "eve"):  # radiologist, auditor
        assert _ask(sites["a"], "kind=instances_by_body_part", user).status_code == 403
    # An admin of another tenant counts its own tenant: nothing here.
    other = _ask(sites["a"], "kind=instances_by_body_part", "otto").json()
    assert other["cells"] == [] and other["total"] == 0
    with sites["a"].client() as client:
        assert client.get("/research/aggregate?kind=kvp_histogram").status_code == 401
    bad = _ask(sites["a"], "kind=patients_by_name")
    assert bad.status_code == 400 and "unknown aggregate kind" in bad.json()["reason"]
    assert _ask(sites["a"], "Modality=CT").status_code == 400  # no kind
    # Refused before the question is looked at: the answer says nothing about it.
    assert _ask(sites["a"], "kind=patients_by_name", "rad").status_code == 403
    assert _ask(sites["a"], "kind=kvp_histogram&limit=5").status_code == 400
    assert _ask(sites["a"], "kind=kvp_histogram&PatientAge=1").status_code == 400
    # A cohort of one named patient would tell whether that patient has such images.
    for key in ("PatientID=PA-1", "PatientName=Patient*", "AccessionNumber=ACC1"):
        named = _ask(sites["a"], f"kind=instances_by_body_part&{key}")
        assert named.status_code == 400, key
        assert "cannot choose the cohort" in named.json()["reason"]
        assert key.split("=")[1] not in named.text


def _identifying_values(site: Site) -> set[str]:
    """Every UID, patient value, accession number and date the site's index holds."""
    values: set[str] = set()
    with site.archive.index.reading() as conn:
        rows = conn.exec_driver_sql(
            "SELECT st.study_uid, st.patient_id, st.patient_name, st.accession_number, "
            "st.study_date, st.patient_birth_date, se.series_uid, i.sop_instance_uid "
            "FROM instances i JOIN series se ON i.series_pk = se.id "
            "JOIN studies st ON se.study_pk = st.id"
        ).all()
    for row in rows:
        values.update(str(v) for v in row if v)
    return values


def test_identified_parquet_answers_a_cohort_query_in_duckdb(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    head = sites["b"].head()
    summary = sites["b"].archive.metadata_export.parquet(cli_principal(), tmp_path)
    assert summary.rows == {"studies": 3, "series": 3, "instances": 19}
    export = [
        r.event_dict
        for r in sites["b"].records_since(head)
        if r.event_dict["event_id"]["code"] == "110106"  # Export (PS3.15 A.5.3.6)
    ]
    assert len(export) == 1
    db = duckdb.connect()
    for table in ("studies", "series", "instances"):
        db.execute(f"CREATE VIEW {table} AS SELECT * FROM '{tmp_path / table}.parquet'")
    # The docs/analytics.md example: CT instances per body part and slice thickness, 2020 on.
    found = db.execute(
        "SELECT s.body_part_examined, i.slice_thickness, count(*) AS n, "
        "sum(i.size_bytes) > 0 AS sized "
        "FROM instances i JOIN series s USING (series_uid) "
        "WHERE i.modality = 'CT' AND i.study_date >= DATE '2020-01-01' "
        "GROUP BY ALL ORDER BY n DESC"
    ).fetchall()
    assert found == [("CHEST", 1.25, 11, True)]
    patients = db.execute(
        "SELECT patient_id, count(*) FROM studies GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert patients == [("PB-1", 1), ("PB-2", 1), ("PB-3", 1)]
    assert db.execute(
        "SELECT DISTINCT tier, kvp FROM instances WHERE modality = 'CT'"
    ).fetchall() == [("hot", 120.0)]


def test_deidentified_parquet_holds_no_original_value_and_matches_the_engine(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    profile = load_default_profile()
    summary = sites["b"].archive.metadata_export.parquet(
        cli_principal(), tmp_path, deid=DeidTarget(profile, PROJECT_KEY, "p1")
    )
    # The object with burned-in text is left out, as the project's views refuse it.
    assert summary.excluded_instances == 1
    assert summary.rows["instances"] == 18
    assert {"patient_name", "accession_number", "patient_birth_date"} <= set(
        summary.dropped_columns
    )
    tables = {t: pq.read_table(tmp_path / f"{t}.parquet").to_pylist() for t in summary.rows}
    text = json.dumps(tables, default=str) + (tmp_path / "manifest.json").read_text()
    originals = _identifying_values(sites["b"])
    dates = {f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in originals if len(d) == 8 and d.isdigit()}
    for value in originals | dates:
        assert value not in text, value
    # Row for row what the engine gives the same object under the same project key.
    with sites["b"].archive.index.reading() as conn:
        metadata = json.loads(
            conn.exec_driver_sql(
                "SELECT metadata_json FROM instances ORDER BY id LIMIT 1"
            ).scalar_one()
        )
    view, report = deidentify_json(metadata, profile, PROJECT_KEY)

    def first(tag: str) -> str:
        return str(view[tag]["Value"][0])

    row = next(r for r in tables["instances"] if r["sop_instance_uid"] == first("00080018"))
    assert row["study_uid"] == first("0020000D")
    assert row["series_uid"] == first("0020000E")
    assert row["patient_id"] == first("00100020") == report.patient_pseudonym
    assert row["study_date"].strftime("%Y%m%d") == first("00080020")
    assert row["slice_thickness"] == float(first("00180050"))


def test_the_cli_exports_a_cohort(sites: dict[str, Site], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nubis.cli.main import app

    runner = CliRunner()
    data = ["--data-dir", str(sites["a"].tmp / "data"), "--set", "durable=false"]
    key = tmp_path / "project.key"
    key.write_bytes(PROJECT_KEY)
    done = runner.invoke(
        app,
        ["export", "metadata", "--to", str(tmp_path / "out"), "Modality=MR", *data,
         "--deid-profile", "default", "--project-key-file", str(key), "--project", "p1"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "de-identified metadata written" in done.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rows"] == {"studies": 1, "series": 1, "instances": 3}
    assert manifest["profile"]["name"] == "default" and manifest["filter"] == ["Modality"]
    half = runner.invoke(app, ["export", "metadata", "--to", str(tmp_path), "--deid-profile",
                               "default", *data])  # fmt: skip
    assert half.exit_code == 2 and "go together" in half.output
    lonely = runner.invoke(app, ["research", "aggregate", "kvp_histogram"])
    assert lonely.exit_code == 2 and "--site" in lonely.output
