"""Admin pages (issue 10): jobs with progress, storage and cost charts, the audit log and its
chain, the DIMSE peers. Real objects stored over STOW-RS, real jobs run by the job runner."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from integration.admin_site import Site, html, make_site, post
from nubis.dimse.peers import Peer, PeerTable
from nubis.jobs.store import JobState
from nubis.security import audit_events
from nubis.tiers.history import record_snapshot, snapshots, today
from nubis.tools import synth

PATIENT = "ADMIN-OPS-P1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = make_site(
        # Prices large enough for a few megabytes to cost more than rounding.
        tmp_path_factory.mktemp("admin-ops"),
        storage_prices="hot=2000,cold=1000,archive=400",
    )
    patient = synth.PatientSpec(PATIENT, "Ops^Pat", "19700101", "F")
    site.store(synth.series_datasets("CT", n_instances=12, seed=3, patient=patient))
    yield site
    site.archive.stop()


# ---------------------------------------------------------------------- jobs
def test_jobs_run_from_the_page_show_progress_and_end(site: Site) -> None:
    with site.browser("boss") as client:
        queued = post(client, "/ui/admin/jobs", {"kind": "verify", "params": "max_mb_per_s=0"})
        assert queued.status_code == 303
        job_id = int(re.search(r"job=(\d+)", queued.headers["location"]).group(1))  # type: ignore[union-attr]
        page = client.get(queued.headers["location"]).text
        assert f"Job {job_id} queued" in page
        row = re.search(rf'<tr data-job="{job_id}" data-state="queued">.*?</tr>', page, re.S)
        assert row and "<progress" in row.group(0) and "Cancel" in row.group(0)
        assert 'src="/ui/static/admin-jobs.js"' in page
        before = client.get(f"/ui/admin/jobs/progress?ids={job_id}").json()["jobs"][0]
        assert before["state"] == "queued" and before["done"] == 0
        assert site.run_jobs() >= 1
        after = client.get(f"/ui/admin/jobs/progress?ids={job_id}").json()["jobs"][0]
        assert after["state"] == "done" and after["finished"]
        assert after["done"] == after["total"] == 12 and after["fraction"] == 1.0
        done = client.get("/ui/admin/jobs?state=done&kind=verify").text
        assert f'data-job="{job_id}" data-state="done"' in done
        assert client.get("/ui/admin/jobs?state=queued").text.count("data-job=") == 0
    job = site.archive.jobs.get(job_id)
    assert job is not None and job.created_by == "boss"  # its reads are recorded for boss


def test_a_queued_job_is_cancelled_from_the_page(site: Site) -> None:
    with site.browser("boss") as client:
        queued = post(client, "/ui/admin/jobs", {"kind": "reap"})
        job_id = int(re.search(r"job=(\d+)", queued.headers["location"]).group(1))  # type: ignore[union-attr]
        cancelled = post(client, f"/ui/admin/jobs/{job_id}/cancel")
        assert cancelled.status_code == 303
        assert f"Job {job_id} cancelled" in client.get(cancelled.headers["location"]).text
        assert post(client, "/ui/admin/jobs/999999/cancel").status_code == 404
    assert site.archive.jobs.get(job_id).state is JobState.CANCELLED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ({"kind": "rewrap"}, "job kind"),
        ({"kind": "nonsense"}, "job kind"),
        ({"kind": "verify", "params": "no-equals-sign"}, "NAME=VALUE"),
    ],
)
def test_bad_job_forms_are_refused(site: Site, form: dict[str, str], why: str) -> None:
    with site.browser("boss") as client:
        response = post(client, "/ui/admin/jobs", form)
        assert response.status_code == 400 and why in response.text


def test_progress_ids_are_bounded(site: Site) -> None:
    with site.browser("boss") as client:
        assert client.get("/ui/admin/jobs/progress?ids=1,x").status_code == 400
        many = ",".join(str(i) for i in range(101))
        assert client.get(f"/ui/admin/jobs/progress?ids={many}").status_code == 400
        assert client.get("/ui/admin/jobs/progress?ids=").json() == {"jobs": []}
    with site.browser("otto") as client:
        assert client.get("/ui/admin/jobs/progress?ids=1").status_code == 403


# ---------------------------------------------------------------------- storage
def _series(page: str, chart: str) -> list[str]:
    figure = re.search(rf'<figure class="chart" id="{chart}".*?</figure>', page, re.S)
    assert figure, chart
    return re.findall(r'<g class="series[^"]*" data-series="([^"]+)"', figure.group(0))


def test_charts_draw_the_snapshots_with_one_series_per_tier(site: Site) -> None:
    index = site.archive.index
    # What earlier days' snapshot jobs would have left: 4 and 40 days ago.
    record_snapshot(index, today() - timedelta(days=40), {"hot": (2, 1 << 20), "cold": (0, 0)})
    record_snapshot(index, today() - timedelta(days=4), {"hot": (5, 3 << 20), "cold": (1, 1 << 20)})
    with site.browser("boss") as client:
        queued = post(client, "/ui/admin/jobs", {"kind": "storage-snapshot"})
        assert queued.status_code == 303
    site.run_jobs()
    kept = snapshots(index, days=1)
    assert len(kept) == 1 and kept[0].usage["hot"][0] == 12  # today's, counted by the job
    with site.browser("boss") as client:
        page = client.get("/ui/admin/storage").text
    for chart in ("bytes-chart", "objects-chart", "cost-chart"):
        assert _series(page, chart) == ["hot", "cold", "archive"], chart
    assert _series(page, "forecast-chart") == ["actual", "forecast"]
    bytes_chart = re.search(r'id="bytes-chart".*?</figure>', page, re.S).group(0)  # type: ignore[union-attr]
    # Three days drawn (40 and 4 days ago, today), each point with its tooltip.
    day = (today() - timedelta(days=40)).isoformat()
    assert f"<title>hot, {day}: 1.0 MiB</title>" in bytes_chart
    assert f"<title>cold, {(today() - timedelta(days=4)).isoformat()}: 1.0 MiB</title>" in (
        bytes_chart
    )
    assert bytes_chart.count("<circle") == 3 * 3
    # The cost bars: one per month, at the prices of storage_prices.
    cost = re.search(r'id="cost-chart".*?</figure>', page, re.S).group(0)  # type: ignore[union-attr]
    months = {(today() - timedelta(days=d)).strftime("%Y-%m") for d in (40, 4, 0)}
    assert cost.count("<rect x=") == 3 * len(months)
    # The table has nubis storage report's figures.
    assert re.search(r'<tr data-tier="hot">\s*<td>hot</td>.*?<td>12</td>', page, re.S)


def test_the_overview_shows_the_latest_snapshot_without_counting_again(site: Site) -> None:
    record_snapshot(site.archive.index, today(), {"hot": (7, 7 << 30)})
    with site.browser("boss") as client:
        page = client.get("/ui/admin/").text
    assert "7.0 GiB" in page and f"7 objects · 14,000.00 per month · on {today()}" in page


def test_the_forecast_follows_the_growth_field(site: Site) -> None:
    with site.browser("boss") as client:
        flat = client.get("/ui/admin/storage?growth=0&months=6").text
        steep = client.get("/ui/admin/storage?growth=10&months=6").text
        assert client.get("/ui/admin/storage?growth=abc&months=-3").status_code == 200
    now = _value(flat, "Per month now")
    assert _value(flat, "Per month in 6 months") == now
    assert _value(steep, "Per month in 6 months") == pytest.approx(now * 1.1**6, rel=0.01)
    assert "forecast at 10.0% a month" in steep
    forecast = re.search(r'id="forecast-chart".*?</figure>', steep, re.S).group(0)  # type: ignore[union-attr]
    assert 'stroke-dasharray="7 5"' in forecast  # the projection is dashed
    assert forecast.count("<title>") >= 7


def _value(page: str, label: str) -> float:
    match = re.search(
        rf'<span class="label">{label}</span><span class="value">([0-9.,]+)</span>', page
    )
    assert match, label
    return float(match.group(1).replace(",", ""))


def test_the_snapshot_is_queued_at_start_when_todays_is_missing(site: Site) -> None:
    site.archive.index.write(lambda c: c.execute(text("DELETE FROM storage_snapshots")))
    site.archive._snapshot_storage_today()
    site.run_jobs()
    assert [s.day for s in snapshots(site.archive.index)] == [today()]
    site.archive._snapshot_storage_today()  # taken: nothing more queued
    assert site.run_jobs() == 0


def test_an_empty_history_draws_today(site: Site) -> None:
    site.archive.index.write(lambda c: c.execute(text("DELETE FROM storage_snapshots")))
    with site.browser("boss") as client:
        page = client.get("/ui/admin/storage").text
    assert "History starts with the first daily snapshot" in page
    assert _series(page, "bytes-chart") == ["hot", "cold", "archive"]
    assert f"<title>hot, {today().isoformat()}: " in page


# ---------------------------------------------------------------------- audit
def test_audit_search_by_patient_is_a_post_and_is_recorded(site: Site) -> None:
    with site.browser("eve") as client:
        before = site.head()
        page = post(client, "/ui/admin/audit", {"patient": PATIENT})
        assert page.status_code == 200
        rows = re.findall(r'<tr data-seq="(\d+)">', page.text)
        assert rows, "the stores of the patient's objects are recorded"
        assert [int(r) for r in rows] == sorted((int(r) for r in rows), reverse=True)
        assert f"patient {PATIENT}" in page.text
        # Every row is about that patient.
        assert page.text.count(f"patient {PATIENT}") == len(rows)
        used = [
            r.event_dict
            for r in site.records_since(before)
            if r.event_dict["event_id"]["code"] == "110101"  # Audit Log Used
        ]
        assert used and used[-1]["participants"][0]["user_id"] == "eve"
        assert used[-1]["front_door"] == "web"
        # The Patient ID went in the body, never in a URL.
        assert PATIENT not in str(page.url)


def test_audit_pages_go_back_in_time(site: Site) -> None:
    queries = [audit_events.query("someone", f"PatientID=Q{i}") for i in range(60)]
    site.archive.audit.record_many(queries)
    with site.browser("boss") as client:
        first = client.get("/ui/admin/audit").text
        seqs = [int(s) for s in re.findall(r'<tr data-seq="(\d+)">', first)]
        assert len(seqs) == 50
        older = re.search(r'name="before" value="(\d+)"', first)
        assert older and int(older.group(1)) == seqs[-1]
        second = post(client, "/ui/admin/audit", {"before": older.group(1)}).text
        seqs2 = [int(s) for s in re.findall(r'<tr data-seq="(\d+)">', second)]
        assert seqs2 and max(seqs2) == seqs[-1] - 1


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ({"since": "2024-13-45"}, "since is a date"),
        ({"until": "yesterday"}, "until is a date"),
        ({"event": "999999"}, "event is one of"),
        ({"before": "-1"}, "before is a record"),
    ],
)
def test_bad_audit_filters_are_named(site: Site, form: dict[str, str], why: str) -> None:
    with site.browser("boss") as client:
        response = post(client, "/ui/admin/audit", form)
        assert response.status_code == 400 and why in response.text


def test_audit_filters_by_event_user_and_day(site: Site) -> None:
    day = today().isoformat()
    with site.browser("boss") as client:
        page = post(
            client,
            "/ui/admin/audit",
            {"event": "110114", "user": "boss", "since": day, "until": day},
        ).text
    rows = re.findall(r'<tr data-seq="\d+">.*?</tr>', page, re.S)
    assert rows
    assert all("User Authentication" in row and "<td>boss</td>" in row for row in rows)
    with site.browser("boss") as client:
        past = post(client, "/ui/admin/audit", {"until": "2001-01-01"}).text
    assert "No records match." in past


def test_the_chain_is_verified_as_a_job_and_a_broken_chain_shows(tmp_path: Path) -> None:
    site = make_site(tmp_path)  # its own archive: a broken chain stays broken
    try:
        with site.browser("boss") as client:
            assert "Verify the chain now" in client.get("/ui/admin/audit").text
            queued = post(client, "/ui/admin/audit/verify")
            assert queued.status_code == 303
            waiting = client.get(queued.headers["location"]).text
            assert 'data-poll="/ui/admin/audit/verification"' in waiting
            polled = client.get("/ui/admin/audit/verification").json()["jobs"]
            assert polled[0]["kind"] == "audit-verify" and polled[0]["state"] == "queued"
            site.run_jobs()
            checkpoint = site.archive.audit.checkpoint()
            assert checkpoint is not None
            intact = client.get("/ui/admin/audit").text
            assert 'data-role="verdict">intact<' in intact
            assert f"record {checkpoint.seq:,}</span>" in intact
            assert f"{today().isoformat()} " in intact  # when it was signed
            # Someone with the database file changes a record behind the archive's back.
            _tamper(site, "UPDATE audit_log SET record = replace(record, 'boss', 'bos5') "
                    "WHERE seq = 5")  # fmt: skip
            post(client, "/ui/admin/audit/verify")
            site.run_jobs()
            broken = client.get("/ui/admin/audit").text
            assert 'data-role="verdict">broken<' in broken
            assert "first bad record 5" in broken
        with site.browser("rad") as client:
            assert post(client, "/ui/admin/audit/verify").status_code == 403
            assert client.get("/ui/admin/audit/verification").status_code == 403
    finally:
        site.archive.stop()


def _tamper(site: Site, statement: str) -> None:
    con = sqlite3.connect(site.archive.settings.data_dir / "index.sqlite")
    con.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    con.execute(statement)
    con.commit()
    con.close()


# ---------------------------------------------------------------------- DIMSE peers
def test_peers_are_added_and_removed_through_the_service(site: Site) -> None:
    table = PeerTable(site.archive.index)
    before = site.head()
    with site.browser("boss") as client:
        saved = post(
            client,
            "/ui/admin/peers",
            {"ae_title": "CT SCANNER/2", "host": "10.0.0.7", "port": "104", "store": "on",
             "tls_subject": "CN=ct2,O=Hospital"},
        )  # fmt: skip
        assert saved.status_code == 303
        assert "CT SCANNER/2 saved." in client.get(saved.headers["location"]).text
        assert table.all() == [
            Peer("CT SCANNER/2", "10.0.0.7", 104, True, False, False, "CN=ct2,O=Hospital")
        ]
        bad = post(client, "/ui/admin/peers", {"ae_title": "X" * 17, "port": "104"})
        assert bad.status_code == 400 and "is not 1-16 printable characters" in bad.text
        assert 'value="104"' in bad.text  # the form comes back as typed
        removed = post(client, "/ui/admin/peers/remove", {"ae_title": "CT SCANNER/2"})
        assert removed.status_code == 303
        again = post(client, "/ui/admin/peers/remove", {"ae_title": "CT SCANNER/2"})
        assert again.status_code == 404
    assert table.all() == []
    changes = [
        r.event_dict
        for r in site.records_since(before)
        if any(t["code"] == "110129" for t in r.event_dict.get("event_types", []))
    ]
    assert [c["objects"][0]["id"] for c in changes] == ["nubis:dimse-peer/CT SCANNER/2"] * 2
    assert "may store with a bound TLS certificate" in changes[0]["outcome_description"]
    assert changes[1]["outcome_description"] == "DIMSE peer CT SCANNER/2 removed"


def test_a_tenant_admin_cannot_touch_the_peer_table(site: Site) -> None:
    with site.browser("otto") as client:
        assert html(client, "/ui/admin/peers").status_code == 403
        assert post(client, "/ui/admin/peers", {"ae_title": "EVIL"}).status_code == 403
    assert PeerTable(site.archive.index).get("EVIL") is None
