"""The licences of nubis's default install (issue 11, README "Codecs and licences").

nubis is Apache-2.0. Its default install, the distributions ``pip install nubis`` brings in
(nubis's own requirements without its extras, with the extras it asks of others such as
``uvicorn[standard]``, for this platform and Python), must be permissive: no GPL or AGPL ever,
LGPL or an unrecognised licence only after a review recorded in licences_reviewed.toml. The
closure is computed from nubis's metadata, not from what is installed, so the test extras in
the test environment change nothing.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

REVIEWED = Path(__file__).with_name("licences_reviewed.toml")

# SPDX identifiers of licences that ask nothing of the work that uses the library beyond notices.
PERMISSIVE_SPDX = {
    "0BSD",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "CC0-1.0",
    "HPND",
    "ISC",
    "MIT",
    "MIT-0",
    "MIT-CMU",
    "PSF-2.0",
    "Python-2.0",
    "Unlicense",
    "Zlib",
}
# Free-text License fields and trove classifiers that name one of them.
PERMISSIVE_NAMES = {
    "apache 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "bsd license": "BSD-3-Clause",
    "isc license": "ISC",
    "isc license (iscl)": "ISC",
    "mit license": "MIT",
    "python software foundation license": "PSF-2.0",
    "the unlicense (unlicense)": "Unlicense",
}
COPYLEFT = re.compile(r"\b(A?GPL|LGPL|GNU)\b", re.IGNORECASE)


def default_install() -> dict[NormalizedName, set[str]]:
    """Every distribution ``pip install nubis`` installs here, with the extras asked of it."""
    extras_of: dict[NormalizedName, set[str]] = {}
    pending: list[tuple[NormalizedName, frozenset[str]]] = [
        (canonicalize_name("nubis"), frozenset())
    ]
    while pending:
        name, extras = pending.pop()
        wanted = {""} | set(extras)
        known = extras_of.get(name)
        if known is not None and wanted <= known:
            continue
        extras_of[name] = (known or set()) | wanted
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # reported by the licence check: a licence that cannot be read
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            # nubis's own extras (test, s3, gpl-codecs) are not the default install: only the
            # "" extra is evaluated for it, and only the extras requested for the others.
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in wanted):
                continue
            pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return extras_of


def declared_licence(name: str) -> str:
    """The licence as the distribution declares it, in the form licences_reviewed.toml keeps."""
    try:
        metadata = distribution(name).metadata
    except PackageNotFoundError:
        return ""
    expression = (metadata.get("License-Expression") or "").strip()
    if expression:
        return expression
    text = (metadata.get("License") or "").strip()
    if text and "\n" not in text and len(text) < 100:
        return text
    classifiers = [
        c.split("::")[-1].strip()
        for c in metadata.get_all("Classifier") or []
        if c.startswith("License ::")
    ]
    return " / ".join(classifiers) or text[:200]


def _spdx_permissive(expression: str) -> bool:
    expression = expression.strip()
    while expression.startswith("(") and expression.endswith(")"):
        expression = expression[1:-1].strip()
    alternatives = re.split(r"\s+OR\s+", expression)
    if len(alternatives) > 1:
        return any(_spdx_permissive(part) for part in alternatives)
    return all(term.strip("() ") in PERMISSIVE_SPDX for term in re.split(r"\s+AND\s+", expression))


def verdict(licence: str) -> str:
    """``permissive``, ``copyleft`` or ``unknown``."""
    if COPYLEFT.search(licence):
        return "copyleft"
    names = [part.strip() for part in licence.split(" / ")]
    if all(_spdx_permissive(n) or PERMISSIVE_NAMES.get(n.lower()) for n in names if n):
        return "permissive" if licence else "unknown"
    return "unknown"


def reviewed() -> dict[str, dict[str, str]]:
    return tomllib.loads(REVIEWED.read_text())


def test_verdicts() -> None:
    assert verdict("Apache-2.0 OR BSD-3-Clause") == "permissive"
    assert verdict("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0") == "permissive"
    assert verdict("MIT License / Apache Software License") == "permissive"
    assert verdict("GPL V3.0") == "copyleft"  # pylibjpeg-libjpeg's License field
    assert (
        verdict("GNU General Public License v3 (GPLv3) / Other/Proprietary License") == "copyleft"
    )
    assert verdict("LGPL-3.0-only") == "copyleft"
    assert verdict("AGPL-3.0-or-later") == "copyleft"
    assert verdict("MIT AND GPL-2.0-only") == "copyleft"
    assert verdict("Proprietary") == "unknown"
    assert verdict("") == "unknown"


def _unapproved() -> Iterator[str]:
    review = reviewed()
    for name in sorted(default_install()):
        licence = declared_licence(name)
        entry = review.get(name)
        if entry is not None:
            if entry.get("licence") != licence:
                yield f"{name}: reviewed as {entry.get('licence')!r}, now declares {licence!r}"
            elif "GPL" in licence.replace("LGPL", "") or not entry.get("reason", "").strip():
                yield f"{name}: {licence!r} cannot be allowed by review"
        elif not licence:
            yield f"{name}: required but not installed here, its licence cannot be read"
        elif verdict(licence) != "permissive":
            yield f"{name}: {verdict(licence)} licence {licence!r}, not reviewed"


def test_default_install_is_permissive() -> None:
    problems = list(_unapproved())
    assert not problems, "\n".join(problems)


def test_no_stale_reviews() -> None:
    stale = set(reviewed()) - set(default_install())
    assert not stale, f"reviewed but no longer installed by default: {sorted(stale)}"


def test_gpl_codec_is_opt_in_only() -> None:
    closure = default_install()
    assert "pylibjpeg-libjpeg" not in closure
    requires = distribution("nubis").requires or []
    gpl = [r for r in requires if Requirement(r).name == "pylibjpeg-libjpeg"]
    assert gpl and all(Requirement(r).marker is not None for r in gpl)
    assert all(Requirement(r).marker.evaluate({"extra": "gpl-codecs"}) for r in gpl)  # type: ignore[union-attr]
