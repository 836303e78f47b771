"""``nubis ohif fetch``: get a prebuilt OHIF viewer from the npm registry for ``viewer_ohif_dir``.

The npm package ``@ohif/app`` ships the built viewer in ``dist/``. ``npm pack`` downloads that
one tarball (no dependencies, no install scripts run); its ``dist/`` and OHIF's licence (MIT)
are extracted into the folder, which ``nubis serve`` then serves at /ohif/ (web/ui/ohif.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from nubis.cli.output import console

# The version the test suite runs against; another 3.x may be asked for with --version.
OHIF_VERSION = "3.13.2"
_VERSION = re.compile(r"3\.\d+\.\d+(-[0-9A-Za-z.]+)?")
_NPM_TIMEOUT_SECONDS = 600

app = typer.Typer(help="OHIF, the web viewer served at /ohif/: fetch it.", no_args_is_help=True)


class FetchError(Exception):
    """Why OHIF could not be fetched, in words for the operator."""


def fetch_ohif(version: str, target: Path) -> Path:
    """``@ohif/app@version``'s ``dist/`` in ``target`` (replaced whole, or left as it was)."""
    if not _VERSION.fullmatch(version):
        raise FetchError(f"--version {version!r}: nubis configures OHIF 3 (e.g. {OHIF_VERSION})")
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed (Debian: apt-get install npm)")
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ohif-fetch-") as work:
        try:
            done = subprocess.run(
                [npm, "pack", f"@ohif/app@{version}", "--pack-destination", work, "--silent"],
                capture_output=True,
                text=True,
                timeout=_NPM_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FetchError(f"npm pack did not finish in {_NPM_TIMEOUT_SECONDS} s") from None
        if done.returncode != 0:
            raise FetchError(f"npm pack @ohif/app@{version} failed: {done.stderr.strip()[-500:]}")
        tarballs = list(Path(work).glob("*.tgz"))
        if len(tarballs) != 1:
            raise FetchError("npm pack left no package tarball")
        staging = Path(work) / "extracted"
        with tarfile.open(tarballs[0]) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith("package/dist/") or m.name == "package/LICENSE"
            ]
            # The "data" filter refuses absolute paths, links out of the folder, devices.
            archive.extractall(staging, members=members, filter="data")
        dist = staging / "package" / "dist"
        if not (dist / "index.html").is_file():
            raise FetchError(f"@ohif/app@{version} has no dist/index.html")
        shutil.move(staging / "package" / "LICENSE", dist / "LICENSE.OHIF")
        (dist / "nubis-ohif-version.txt").write_text(version + "\n")
        previous = Path(work) / "previous"
        if target.exists():
            target.rename(previous)
        dist.rename(target)
    return target


@app.command()
def fetch(
    version: Annotated[str, typer.Option(help="@ohif/app version (3.x).")] = OHIF_VERSION,
    dir_: Annotated[
        Path, typer.Option("--dir", help="Folder to put the built viewer in (replaced).")
    ] = Path("ohif"),
) -> None:
    """Download the built OHIF viewer (@ohif/app, MIT) with npm; then set viewer_ohif_dir."""
    try:
        folder = fetch_ohif(version, dir_)
    except FetchError as exc:
        console.print(str(exc), style="red")
        raise typer.Exit(1) from None
    console.print(f"OHIF {version} is in {folder}")
    console.print(f"serve it at /ohif/ with: nubis serve --set viewer_ohif_dir={folder}")


__all__ = ["OHIF_VERSION", "FetchError", "app", "fetch_ohif"]
