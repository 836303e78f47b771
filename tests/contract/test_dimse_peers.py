"""The DIMSE peer table in the index (PS3.8 7.1.1.9 admission by calling AE title; PS3.4
C.4.2.1.4.1 move destinations), on SQLite and PostgreSQL, with two PeerTable objects on one
database standing for two nodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from nubis.dimse.peers import (
    AccessPolicy,
    Peer,
    PeerCertificate,
    PeerError,
    PeerTable,
    import_legacy_file,
)
from nubis.index.database import Index

FINGERPRINT = "AB:" * 31 + "CD"


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        postgres = request.getfixturevalue("postgres")
        url = str(postgres.database(f"peers_{abs(hash(request.node.nodeid)):x}"))
    idx = Index(url)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


def test_every_node_sees_the_same_peers(index: Index) -> None:
    """A peer put through one node is seen by another; a removal reaches it within the
    cache bound; an AE title not in the cache re-reads the table at once."""
    node_a, node_b = PeerTable(index, cache_seconds=0.5), PeerTable(index, cache_seconds=0.5)
    assert node_b.get("PACS") is None  # caches an empty table
    time.sleep(0.3)  # past MISS_RELOAD_SECONDS
    node_a.put(Peer("PACS", "10.0.0.7", 104, store=False, tls_fingerprint=FINGERPRINT))
    found = node_b.get("PACS")
    assert found == Peer("PACS", "10.0.0.7", 104, False, True, True, "", "ab" * 31 + "cd")
    node_a.put(Peer("PACS", "10.0.0.8", 104))  # replaces
    assert [p.host for p in node_a.all()] == ["10.0.0.8"]
    assert node_a.remove("PACS") and not node_a.remove("PACS")
    assert node_b.get("PACS") is not None  # cached
    time.sleep(0.6)
    assert node_b.get("PACS") is None


def test_legacy_file_is_imported_once(index: Index, tmp_path: Path) -> None:
    path = tmp_path / "dimse-peers.toml"
    path.write_text(
        '[[peer]]\nae_title = "OLD"\nhost = "127.0.0.1"\nport = 4242\n'
        "store = true\nquery = false\nretrieve = true\n"
    )
    table = PeerTable(index)
    assert import_legacy_file(table, path) == 1
    assert not path.exists() and (tmp_path / "dimse-peers.toml.imported").exists()
    assert table.all() == [Peer("OLD", "127.0.0.1", 4242, True, False, True)]
    assert import_legacy_file(table, path) == 0
    path.write_text("[[peer]]\nae_title = 'x' \nport = 99999\n")
    with pytest.raises(PeerError):
        table.import_file(path)


def test_certificate_binding(index: Index) -> None:
    """An AE title bound to a certificate (PS3.15 B.12 client authentication) is admitted with
    that certificate only; without one or with another, rejected as an alert."""
    table = PeerTable(index)
    table.put(Peer("CT1", tls_subject="CN=ct1"))
    table.put(Peer("CT2", tls_fingerprint=FINGERPRINT))
    policy = AccessPolicy(table, "refuse")
    ct1 = PeerCertificate("CN=ct1", "00" * 32)
    other = PeerCertificate("CN=intruder", "ab" * 31 + "cd")
    assert policy.admit("CT1", "10.0.0.1", ct1).permissions is not None
    for cert in (None, other):
        decision = policy.admit("CT1", "10.0.0.1", cert)
        assert decision.permissions is None and decision.alert
    assert policy.admit("CT2", "10.0.0.1", other).permissions is not None
    assert policy.admit("CT2", "10.0.0.1", ct1).permissions is None
    unbound = policy.admit("NOBODY", "10.0.0.1", ct1)
    assert unbound.permissions is None and not unbound.alert


def test_an_index_down_for_a_moment_keeps_the_last_table(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission goes on with the table last read while the index cannot be read; with no
    table read yet the error reaches the caller (the server then rejects, transient)."""
    table = PeerTable(index, cache_seconds=0.0)
    table.put(Peer("PACS"))
    assert table.get("PACS") is not None

    def down() -> None:
        raise OperationalError("SELECT", {}, Exception("index down"))

    monkeypatch.setattr(table, "_read", down)
    assert table.get("PACS") == Peer("PACS")
    assert table.get("OTHER") is None
    fresh = PeerTable(index)
    monkeypatch.setattr(fresh, "_read", down)
    with pytest.raises(SQLAlchemyError):
        fresh.get("PACS")


def test_cli_edits_the_table_of_the_index(index: Index, tmp_path: Path) -> None:
    """`nubis dimse peers` on one machine, the table read by a node on another (same index)."""
    from typer.testing import CliRunner

    from nubis.cli.main import app

    args = ["--data-dir", str(tmp_path / "cli"), "--set", f"index={index.url}"]

    def run(*command: str, code: int = 0) -> str:
        result = CliRunner().invoke(
            app, ["dimse", "peers", *command, *args], env={"COLUMNS": "200"}
        )
        assert result.exit_code == code, result.output
        return result.output

    run("add", "MODALITY", "10.1.2.3", "--no-query", "--no-retrieve", "--tls-subject", "CN=m1")
    assert PeerTable(index).get("MODALITY") == Peer(
        "MODALITY", "10.1.2.3", 0, True, False, False, "CN=m1"
    )
    assert "CN=m1" in run("list")
    assert "is not" in run("add", "X" * 17, code=1)
    run("remove", "MODALITY")
    assert "not in the peer table" in run("remove", "MODALITY", code=1)
    assert PeerTable(index).all() == []
