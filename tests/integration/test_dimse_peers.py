"""The DIMSE peer table lives in the index (PS3.8 7.1.1.9: a caller whose AE title is not
known is rejected, permanent, "calling AE title not recognized"): the peer file of earlier
versions is imported at start, `nubis dimse peers` edits the table while the server runs, and a
removal reaches the server within dimse_peers_cache_seconds."""

from __future__ import annotations

import time
from pathlib import Path

from integration.cli import nubis_cli
from integration.dimse_helpers import AE, free_port, need_dcmtk, run

PEER = '[[peer]]\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = 0\n'


def _nubis(*args: str) -> str:
    return nubis_cli(*args, check=True).stdout


def test_peer_file_import_and_edits(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    need_dcmtk("echoscu")
    old_file = tmp_path / "peers.toml"
    old_file.write_text(PEER.format(ae="OLDPACS"))
    port = free_port()
    server = server_factory(
        "dimse-peers", "--dimse-port", str(port),
        "--set", "dimse_unknown_callers=refuse",
        "--set", f"dimse_peers={old_file}",
        "--set", "dimse_peers_cache_seconds=1",
    )  # fmt: skip
    data_dir = ["--data-dir", str(server.data_dir)]

    def echo(calling: str) -> bool:
        args = ["echoscu", "-aet", calling, "-aec", AE, "127.0.0.1", str(port)]
        return run(args, check=False).returncode == 0

    # Imported once at start, and the file set aside so a later removal sticks.
    assert echo("OLDPACS")
    assert not old_file.exists() and old_file.with_name("peers.toml.imported").exists()
    assert "OLDPACS" in _nubis("dimse", "peers", "list", *data_dir)

    assert not echo("NEWPACS")
    new_file = tmp_path / "more.toml"
    new_file.write_text(PEER.format(ae="NEWPACS"))
    assert "1 peer(s) imported" in _nubis("dimse", "peers", "import", str(new_file), *data_dir)
    # Not in the cache (1 s): an unknown title re-reads the table (at most every
    # MISS_RELOAD_SECONDS, which nubis_cli waits after a peer command).
    assert echo("NEWPACS")

    _nubis("dimse", "peers", "remove", "OLDPACS", *data_dir)
    time.sleep(1.2)  # dimse_peers_cache_seconds
    assert not echo("OLDPACS")
