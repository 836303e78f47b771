"""``nubis dimse``: talk DIMSE to remote AEs, and manage the peer table of the server.

``echo|find|move|get|store`` are SCU commands against any AE (nubis or another archive);
``peers list|add|remove|import`` edit the remote AE table that C-MOVE destinations and access
control come from: a table of the index, so every node sees the same peers; running nodes pick
up changes within ``dimse_peers_cache_seconds``, without a restart. ``add`` and ``remove`` go
through the same service as the admin pages (nubis.services.operations), which records them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from rich.table import Table

from nubis.cli.common import Config, DataDir, Set, open_archive, open_index
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.dimse.peers import PeerTable
    from nubis.dimse.scu import Remote
    from nubis.security.policy import Principal


app = typer.Typer(
    help="DIMSE client commands (C-ECHO, C-FIND, C-MOVE, C-GET, C-STORE) and the peer table.",
    no_args_is_help=True,
)
peers_app = typer.Typer(help="The remote AE table (C-MOVE destinations, access control).")
app.add_typer(peers_app, name="peers")

Host = Annotated[str, typer.Argument(help="Host of the remote AE.")]
Port = Annotated[int, typer.Argument(help="Port of the remote AE.")]
Called = Annotated[str, typer.Option("--aec", help="Called AE title (the remote AE).")]
Calling = Annotated[str, typer.Option("--aet", help="Our calling AE title.")]
Model = Annotated[str, typer.Option("--model", help="Information model: study or patient root.")]
Keys = Annotated[
    list[str] | None,
    typer.Option("--key", "-k", help="Key as Keyword=Value or Keyword (return key); repeatable."),
]
Level = Annotated[str, typer.Option("--level", help="PATIENT, STUDY, SERIES or IMAGE.")]
TlsCa = Annotated[
    str | None, typer.Option("--tls-ca", help="Use DICOM TLS; verify the peer with this CA.")
]
TlsCert = Annotated[str | None, typer.Option("--tls-cert", help="Client certificate (PEM).")]
TlsKey = Annotated[str | None, typer.Option("--tls-key", help="Client key (PEM).")]
Tls = Annotated[bool, typer.Option("--tls", help="Use DICOM TLS without verifying the peer.")]


def _remote(
    host: str,
    port: int,
    called: str,
    calling: str,
    tls: bool = False,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> Remote:
    from nubis.dimse.scu import Remote, client_tls

    context = client_tls(ca or "", cert or "", key or "") if (tls or ca or cert) else None
    return Remote(host, port, called, calling, context)


def _identifier(level: str, keys: list[str] | None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level.upper()
    for item in keys or []:
        name, _, value = item.partition("=")
        tag = tag_for_keyword(name.strip())
        if tag is None:
            console.print(f"{name!r} is not a DICOM keyword", style="red")
            raise typer.Exit(2)
        ds.add_new(tag, dictionary_VR(tag), value or None)
    return ds


def _fail(exc: Exception) -> typer.Exit:
    console.print(str(exc), style="red")
    return typer.Exit(1)


@app.command()
def echo(
    host: Host,
    port: Port,
    aec: Called = "ANY-SCP",
    aet: Calling = "NUBIS",
    tls: Tls = False,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
) -> None:
    """C-ECHO (verification) a remote AE."""
    from nubis.dimse import scu

    try:
        status = scu.echo(_remote(host, port, aec, aet, tls, tls_ca, tls_cert, tls_key))
    except scu.DimseError as exc:
        raise _fail(exc) from None
    out.print(f"C-ECHO status 0x{status:04X}")
    if status != 0:
        raise typer.Exit(1)


@app.command()
def find(
    host: Host,
    port: Port,
    aec: Called = "ANY-SCP",
    aet: Calling = "NUBIS",
    level: Level = "STUDY",
    key: Keys = None,
    model: Model = "study",
) -> None:
    """C-FIND: print each match (e.g. -k PatientID=123 -k StudyInstanceUID)."""
    from nubis.dimse import scu

    count = 0
    try:
        for found in scu.find(_remote(host, port, aec, aet), _identifier(level, key), model=model):
            count += 1
            out.print(f"--- match {count}")
            out.print(str(found))
    except scu.DimseError as exc:
        raise _fail(exc) from None
    console.print(f"{count} match(es)")


@app.command()
def move(
    host: Host,
    port: Port,
    destination: Annotated[str, typer.Argument(help="AE title of the move destination.")],
    aec: Called = "ANY-SCP",
    aet: Calling = "NUBIS",
    level: Level = "STUDY",
    key: Keys = None,
    model: Model = "study",
) -> None:
    """C-MOVE the identified objects to another AE (e.g. -k StudyInstanceUID=1.2.3)."""
    from nubis.dimse import scu

    try:
        result = scu.move(
            _remote(host, port, aec, aet), _identifier(level, key), destination, model=model
        )
    except scu.DimseError as exc:
        raise _fail(exc) from None
    out.print(
        f"C-MOVE status 0x{result.status:04X}: {result.completed} completed, "
        f"{result.failed} failed, {result.warning} warning"
    )
    if result.status not in (0x0000, 0xB000):
        raise typer.Exit(1)


@app.command()
def get(
    host: Host,
    port: Port,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for received objects.")] = Path(
        "."
    ),
    aec: Called = "ANY-SCP",
    aet: Calling = "NUBIS",
    level: Level = "STUDY",
    key: Keys = None,
    model: Model = "study",
) -> None:
    """C-GET the identified objects into a folder."""
    from nubis.dimse import scu

    try:
        result = scu.get(
            _remote(host, port, aec, aet), _identifier(level, key), out_dir, model=model
        )
    except scu.DimseError as exc:
        raise _fail(exc) from None
    out.print(
        f"C-GET status 0x{result.status:04X}: {len(result.received)} received, "
        f"{result.failed} failed"
    )
    if result.status not in (0x0000, 0xB000):
        raise typer.Exit(1)


@app.command()
def store(
    host: Host,
    port: Port,
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (recursive).")],
    aec: Called = "ANY-SCP",
    aet: Calling = "NUBIS",
) -> None:
    """C-STORE files to a remote AE, each in its own transfer syntax."""
    from nubis.dimse import scu

    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
    try:
        results = scu.store(_remote(host, port, aec, aet), [f for f in files if f.is_file()])
    except scu.DimseError as exc:
        raise _fail(exc) from None
    failed = [(p, s) for p, s in results if s not in (0x0000, 0xB000, 0xB007, 0xB006)]
    for path, status in failed:
        console.print(f"{path}: status 0x{status & 0xFFFF:04X}")
    out.print(f"{len(results) - len(failed)} stored, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


@contextmanager
def _table(
    data_dir: Path | None, config: Path | None, set_: list[str] | None
) -> Iterator[PeerTable]:
    """The peer table of the archive's index (migrated if it is behind)."""
    from nubis.dimse.peers import PeerTable

    with open_index(data_dir, config, set_) as (_settings, index):
        yield PeerTable(index)


def _operator() -> Principal:
    from nubis.security.authn import cli_principal

    return cli_principal()


@peers_app.command("list")
def peers_list(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Show the remote AEs, what each may do and the TLS certificate bound to it."""
    table = Table("AE title", "host", "port", "store", "query", "retrieve", "TLS certificate")
    with _table(data_dir, config, set_) as peers:
        for p in peers.all():
            cert = " ".join(
                x for x in (p.tls_subject, p.tls_fingerprint and f"sha256:{p.tls_fingerprint}") if x
            )
            table.add_row(
                p.ae_title, p.host, str(p.port), str(p.store), str(p.query), str(p.retrieve), cert
            )
    out.print(table)


@peers_app.command("add")
def peers_add(
    ae_title: Annotated[str, typer.Argument(help="The remote AE title.")],
    host: Annotated[str, typer.Argument(help="Its host; callers must connect from it.")] = "",
    port: Annotated[int, typer.Argument(help="Its DICOM port (needed as a C-MOVE target).")] = 0,
    store: Annotated[bool, typer.Option(help="May C-STORE and request commitment.")] = True,
    query: Annotated[bool, typer.Option(help="May C-FIND.")] = True,
    retrieve: Annotated[bool, typer.Option(help="May C-MOVE and C-GET.")] = True,
    tls_subject: Annotated[
        str,
        typer.Option(
            help="Callers with this AE title must come over DICOM TLS with a client "
            "certificate of this subject (RFC 4514, as openssl x509 -noout -subject -nameopt "
            "RFC2253 prints it, e.g. 'CN=ct1,O=Hospital')."
        ),
    ] = "",
    tls_fingerprint: Annotated[
        str,
        typer.Option(
            help="... or with exactly this certificate (SHA-256 fingerprint, as printed by "
            "openssl x509 -noout -fingerprint -sha256)."
        ),
    ] = "",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Add or replace a remote AE (in the index: every node sees it)."""
    from nubis.dimse.peers import Peer, PeerError

    try:
        peer = Peer(ae_title, host, port, store, query, retrieve, tls_subject, tls_fingerprint)
    except PeerError as exc:
        raise _fail(exc) from None
    with open_archive(data_dir, config, set_) as archive:
        archive.operations.put_peer(_operator(), peer)
    out.print(f"{peer.ae_title} saved")


@peers_app.command("remove")
def peers_remove(
    ae_title: Annotated[str, typer.Argument(help="The remote AE title.")],
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Remove a remote AE."""
    with open_archive(data_dir, config, set_) as archive:
        archive.operations.remove_peer(_operator(), ae_title)
    out.print(f"{ae_title} removed")


@peers_app.command("import")
def peers_import(
    file: Annotated[Path, typer.Argument(help="A dimse-peers.toml of an earlier version.")],
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Put the entries of a peer file into the table (replacing entries of the same AE title);
    the file is left as it is. nubis serve imports its own dimse_peers file at start."""
    from nubis.dimse.peers import PeerError

    with _table(data_dir, config, set_) as peers:
        try:
            imported = peers.import_file(file)
        except PeerError as exc:
            raise _fail(exc) from None
    out.print(f"{len(imported)} peer(s) imported from {file}")
