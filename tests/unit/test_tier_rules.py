"""Tiers, lifecycle rules, prices, compression, the schedule and the storage report's
arithmetic."""

from __future__ import annotations

import pytest

from nubis.config import SettingsError, load_settings
from nubis.jobs.schedule import parse_schedule
from nubis.tiers.report import GB, build_report, parse_growth
from nubis.tiers.rules import (
    DAY_MS,
    LIST_PRICES,
    LOSSLESS_CODECS,
    StudyFacts,
    TierBucket,
    parse_compression,
    parse_prices,
    parse_rules,
    parse_tiers,
    target_tier,
)

TIERS = parse_tiers("hot=STANDARD, cold=STANDARD_IA, archive=GLACIER")
RULES = parse_rules(
    "modality=MG age<730d -> hot; unread>365d -> archive\nunread>30d -> cold", TIERS
)
NOW = 1_000 * 365 * DAY_MS


def study(
    *,
    modalities: str = "CT",
    stored_days_ago: int = 0,
    read_days_ago: int | None = None,
    partition: str = "default",
    pin: str | None = None,
    pin_until: int | None = None,
) -> StudyFacts:
    return StudyFacts(
        partition,
        frozenset(modalities.split("\\")),
        NOW - stored_days_ago * DAY_MS,
        None if read_days_ago is None else NOW - read_days_ago * DAY_MS,
        pin,
        pin_until,
    )


def test_tiers_parse() -> None:
    assert TIERS.names == ("hot", "cold", "archive")
    assert TIERS.default.name == "hot" and TIERS.get("archive").target == "GLACIER"
    assert TIERS.get("archive").archived and not TIERS.get("cold").archived
    assert parse_tiers("only=/srv/blobs").default.target == "/srv/blobs"
    for bad, message in (
        ("", "at least one"),
        ("hot", "NAME=TARGET"),
        ("Hot=STANDARD", "tier name"),
        ("hot=STANDARD,hot=GLACIER", "twice"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_tiers(bad)


def test_tiers_in_buckets_of_their_own() -> None:
    tiers = parse_tiers(
        "hot=STANDARD, cold=s3://nubis-cold/some/prefix/, "
        "archive=s3://nubis-archive?storage_class=glacier"
    )
    assert tiers.get("hot").bucket is None
    assert tiers.get("cold").bucket == TierBucket("nubis-cold", "some/prefix", None)
    assert tiers.get("archive").bucket == TierBucket("nubis-archive", "", "GLACIER")
    # A bucket naming no class holds what a copy into it gets: STANDARD, priced as such.
    assert [t.storage_class for t in tiers.all] == ["STANDARD", "STANDARD", "GLACIER"]
    assert [t.archived for t in tiers.all] == [False, False, True]
    assert parse_prices("", tiers) == {"hot": 0.023, "cold": 0.023, "archive": 0.0036}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("gs://nubis-cold/p", "a tier URL names an S3 bucket"),
        ("s3://Nubis_Cold/p", "bucket name 'Nubis_Cold' is not valid"),
        ("s3:///p", "bucket name '' is not valid"),
        ("s3://nubis-cold/p?endpoint=https://elsewhere", "unknown parameter 'endpoint'"),
        ("s3://nubis-cold/p?storage_class=", "storage_class '' is not"),
        ("s3://nubis-cold/p?storage_class=glacier deep", "storage_class 'glacier deep' is not"),
        ("s3://nubis-cold/p?storage_class=GLACIER&storage_class=STANDARD", "given twice"),
        ("s3://nubis-cold/p#x", "unexpected '#x'"),
        ("s3://key:secret@nubis-cold/p", "credentials do not go in a tier URL"),
    ],
)
def test_bad_tier_urls_are_named(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^tier 'cold': .*{message}") as caught:
        parse_tiers(f"hot=STANDARD,cold={target}")
    assert "secret" not in str(caught.value)


def test_the_first_tier_is_never_a_bucket() -> None:
    with pytest.raises(ValueError, match=r"tier 'hot': the first tier .* not a bucket"):
        parse_tiers("hot=s3://nubis-hot/p,cold=STANDARD_IA")


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (study(), "hot"),  # no rule matches: the first tier
        (study(stored_days_ago=31), "cold"),  # never read: counted from when it was stored
        (study(stored_days_ago=100, read_days_ago=2), "hot"),  # read recently
        (study(stored_days_ago=400, read_days_ago=40), "cold"),
        (study(stored_days_ago=400), "archive"),
        (study(modalities="CT\\MG", stored_days_ago=400), "hot"),  # MG stays hot 2 years
        (study(modalities="MG", stored_days_ago=800), "archive"),  # ... and not longer
        (study(stored_days_ago=400, pin="hot"), "hot"),  # a pin wins
        (study(stored_days_ago=400, pin="cold", pin_until=NOW - 1), "archive"),  # expired
        (study(stored_days_ago=400, pin="gone"), "archive"),  # a tier no longer configured
    ],
)
def test_target_tier(facts: StudyFacts, expected: str) -> None:
    assert target_tier(facts, RULES, TIERS, NOW) == expected


def test_rule_conditions() -> None:
    [rule] = parse_rules("partition=clinic-b modality=us,mr unread<12h age>2w -> cold", TIERS)
    assert rule.modalities == frozenset({"US", "MR"}) and rule.partition == "clinic-b"
    assert rule.unread_under == DAY_MS // 2 and rule.age_over == 14 * DAY_MS
    assert rule.matches(study(modalities="MR", stored_days_ago=20, read_days_ago=0,
                              partition="clinic-b"), NOW)  # fmt: skip
    assert not rule.matches(study(modalities="MR", stored_days_ago=20), NOW)
    assert parse_rules("* -> archive", TIERS)[0].matches(study(), NOW)
    assert parse_rules("", TIERS) == ()
    for bad, message in (
        ("unread>30d cold", "CONDITIONS -> TIER"),
        ("unread>30d -> warm", "no tier 'warm'"),
        ("-> cold", "no condition"),
        ("unread>30 -> cold", "cannot read 'unread>30'"),
        ("size>1G -> cold", "cannot read"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_rules(bad, TIERS)


def test_prices() -> None:
    assert parse_prices("", TIERS) == {"hot": 0.023, "cold": 0.0125, "archive": 0.0036}
    assert parse_prices("cold=0.01", TIERS)["cold"] == 0.01
    folders = parse_tiers("fast=/ssd,slow=/nas")
    assert parse_prices("slow=0.002", folders) == {"fast": None, "slow": 0.002}
    assert set(LIST_PRICES) >= {"STANDARD", "STANDARD_IA", "GLACIER", "DEEP_ARCHIVE"}
    for bad in ("warm=1", "cold=cheap", "cold=-1", "cold"):
        with pytest.raises(ValueError):
            parse_prices(bad, TIERS)


def test_schedule() -> None:
    assert parse_schedule("reap=1h, tier=1d,verify=2w") == {
        "reap": 3600,
        "tier": 86400,
        "verify": 14 * 86400,
    }
    assert parse_schedule("") == {}
    # A rewrap names its KEK: there is nothing a periodic one could work on.
    for bad in ("reap", "reap=0h", "reap=1 fortnight", "backup=1d", "rewrap=1d"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_settings_are_validated() -> None:
    for environ, message in (
        ({"NUBIS_TIERS": "hot"}, "tiers"),
        ({"NUBIS_LIFECYCLE": "unread>30d -> warm"}, "lifecycle"),
        ({"NUBIS_STORAGE_PRICES": "warm=1"}, "storage_prices"),
        ({"NUBIS_JOBS_SCHEDULE": "reap=often"}, "jobs_schedule"),
        ({"NUBIS_JOBS_LEASE_SECONDS": "1"}, "jobs_lease_seconds"),
        ({"NUBIS_TIERS": "hot=STANDARD,cold=s3://Cold/p"}, "tiers: tier 'cold': .*bucket name"),
        # The folder store has no buckets: a tier naming one is refused, not made a folder.
        ({"NUBIS_TIERS": "hot=STANDARD,cold=s3://nubis-cold"}, "cold name.* needs an S3 blob"),
    ):
        with pytest.raises(SettingsError, match=message):
            load_settings(environ=environ)
    settings = load_settings(environ={"NUBIS_JOBS": "false", "NUBIS_LIFECYCLE": "* -> cold"})
    assert settings.jobs is False and settings.lifecycle == "* -> cold"
    on_s3 = {"NUBIS_BLOBS": "s3://nubis/p", "NUBIS_TIERS": "hot=STANDARD,cold=s3://nubis-cold"}
    assert load_settings(environ=on_s3).tiers == on_s3["NUBIS_TIERS"]


def test_growth() -> None:
    assert parse_growth("5%/month") == pytest.approx(0.05)
    assert parse_growth("5%") == pytest.approx(0.05)
    assert parse_growth("0.05") == pytest.approx(0.05)
    assert parse_growth("2.5 % / mo") == pytest.approx(0.025)
    with pytest.raises(ValueError):
        parse_growth("lots")


def test_report_arithmetic() -> None:
    usage = {"hot": (10, 100 * GB), "cold": (5, 400 * GB), "archive": (0, 0)}
    report = build_report(usage, TIERS, parse_prices("", TIERS), growth=0.05, months=12)
    rows = {r.tier: r for r in report.tiers}
    assert rows["hot"].monthly_cost == pytest.approx(2.3)
    assert rows["cold"].monthly_cost == pytest.approx(5.0)
    assert report.monthly_cost == pytest.approx(7.3)
    assert (report.objects, report.bytes) == (15, 500 * GB)
    assert report.projection[0] == (0, 500 * GB, pytest.approx(7.3))
    assert report.projected_monthly_cost == pytest.approx(7.3 * 1.05**12)
    assert report.projection[12][1] == round(500 * GB * 1.05**12)
    # The next 12 months: months 0..11.
    assert report.cost_over_months == pytest.approx(sum(7.3 * 1.05**m for m in range(12)))
    data = report.as_json()
    assert data["monthly_cost"] == 7.3 and len(data["projection"]) == 13
    flat = build_report(usage, TIERS, parse_prices("", TIERS), months=0)
    assert flat.cost_over_months == 0 and flat.projected_monthly_cost == pytest.approx(7.3)


def test_report_unpriced_and_unconfigured_tiers() -> None:
    folders = parse_tiers("fast=/ssd,slow=/nas")
    usage = {"fast": (1, GB), "slow": (0, 0), "legacy": (2, 2 * GB)}
    report = build_report(usage, folders, parse_prices("slow=0.01", folders), months=1)
    assert report.unpriced_tiers == ["fast", "legacy"]
    assert report.monthly_cost == 0
    assert {r.tier: r.target for r in report.tiers}["legacy"] == "(not configured)"


J2K = "1.2.840.10008.1.2.4.90"
HTJ2K = "1.2.840.10008.1.2.4.201"
JPEG_LS = "1.2.840.10008.1.2.4.80"


def test_compression_parse() -> None:
    """tier_compression names a lossless codec per tier, by name or transfer syntax UID."""
    assert parse_compression("", TIERS) == {}
    assert parse_compression(" cold = htj2k , archive=1.2.840.10008.1.2.4.80 ", TIERS) == {
        "cold": HTJ2K,
        "archive": JPEG_LS,
    }
    assert parse_compression("hot=J2K,cold=rle", TIERS) == {
        "hot": J2K,
        "cold": "1.2.840.10008.1.2.5",
    }
    assert set(LOSSLESS_CODECS) == {"htj2k", "htj2k-rpcl", "jpegls", "j2k", "rle"}
    for bad, message in (
        ("cold", "TIER=CODEC"),
        ("cold=", "TIER=CODEC"),
        ("frozen=htj2k", "no tier 'frozen'"),
        ("cold=htj2k,cold=j2k", "named twice"),
        # Lossy or unknown: a tier never keeps what it cannot give back exactly.
        ("cold=jpeg", "not a lossless codec"),
        ("cold=1.2.840.10008.1.2.4.91", "not a lossless codec"),
        ("cold=1.2.840.10008.1.2.4.50", "not a lossless codec"),
        ("cold=1.2.840.10008.1.2.1", "not a lossless codec"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_compression(bad, TIERS)


def test_compression_needs_an_encoder_here() -> None:
    with pytest.raises(ValueError, match=r"no encoder for .*4\.201.*it can encode j2k"):
        parse_compression("cold=htj2k", TIERS, encodable={J2K, "1.2.840.10008.1.2.1"})
    assert parse_compression("cold=j2k", TIERS, encodable={J2K}) == {"cold": J2K}


@pytest.mark.parametrize(
    ("value", "message"),
    [("frozen=j2k", "no tier 'frozen'"), ("cold=jpeg", "not a lossless codec")],
)
def test_compression_setting_is_checked_at_start(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"tier_compression: .*{message}"):
        load_settings(environ={"NUBIS_TIER_COMPRESSION": value})
    assert load_settings(environ={"NUBIS_TIER_COMPRESSION": "cold=j2k"}).tier_compression


def test_report_compression_arithmetic() -> None:
    """Per tier: what its objects took as they arrived and take now, the ratio, the saving."""
    usage = {"hot": (10, 100 * GB), "cold": (8, 300 * GB), "archive": (0, 0)}
    # 6 of cold's 8 objects were re-encoded: 400 GB as they arrived, 200 GB now.
    report = build_report(
        usage,
        TIERS,
        parse_prices("", TIERS),
        months=0,
        compressed={"cold": (6, 400 * GB, 200 * GB)},
    )
    [cold] = report.compression
    assert (cold.tier, cold.objects, cold.compressed) == ("cold", 8, 6)
    assert (cold.bytes_before, cold.bytes_after, cold.saved) == (500 * GB, 300 * GB, 200 * GB)
    assert cold.ratio == pytest.approx(500 / 300) and cold.compressed_ratio == pytest.approx(2.0)
    assert cold.monthly_saving == pytest.approx(200 * 0.0125)
    assert report.monthly_saving == pytest.approx(2.5)
    data = report.as_json()
    assert data["compression"][0]["saved"] == 200 * GB
    assert data["compression"][0]["ratio"] == pytest.approx(1.6667, abs=1e-4)
    assert data["monthly_saving"] == 2.5
    assert build_report(usage, TIERS, parse_prices("", TIERS)).compression == []
