"""Which analyzers exist: the built-ins, and those installed under an entry point.

A distribution adds an analyzer by declaring, in its pyproject.toml::

    [project.entry-points."nubis.analyzers"]
    lung-nodules = "acme_ai.nubis:LungNodules"

The object named is a class or a factory called without arguments; it must return an
:class:`~nubis.analyzers.contract.Analyzer` whose ``name`` is the entry point's name. An entry
point that fails to load is logged and left out: one broken plug-in never stops the others.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

from nubis.analyzers.contract import Analyzer

__all__ = ["GROUP", "available", "builtins", "from_entry_points"]

log = logging.getLogger(__name__)

GROUP = "nubis.analyzers"
# An analyzer's name is part of job parameters, principal ids and settings.
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")


def builtins() -> dict[str, Callable[[], Analyzer]]:
    # Imported here: the CT QC analyzer pulls in highdicom, which only its runs need.
    from nubis.analyzers.ct_qc.analyzer import CtSeriesQc

    return {CtSeriesQc.name: CtSeriesQc}


def from_entry_points(points: Iterable[EntryPoint] | None = None) -> dict[str, Analyzer]:
    """The analyzers of the entry points of group ``nubis.analyzers`` (``points`` in their
    place, for tests), by name; each loaded and built now."""
    found: dict[str, Analyzer] = {}
    for point in entry_points(group=GROUP) if points is None else points:
        try:
            made = point.load()()
        except Exception as exc:
            log.error(
                "analyzer entry point %s (%s) failed to load: %s", point.name, point.value, exc
            )
            continue
        problem = _problem(point.name, made)
        if problem:
            log.error("analyzer entry point %s (%s) left out: %s", point.name, point.value, problem)
            continue
        found[point.name] = made
    return found


def _problem(name: str, made: object) -> str | None:
    if not isinstance(made, Analyzer):
        return "it is not an analyzer (name, version, wants, analyze)"
    if made.name != name:
        return f"its name {made.name!r} is not the entry point's"
    if not _NAME.match(name):
        return "names are 1-63 lower-case letters, digits and hyphens"
    return None


def available(
    points: Iterable[EntryPoint] | None = None,
    *,
    only: Iterable[str] | None = None,
) -> Mapping[str, Analyzer]:
    """Every analyzer by name (``only``: just those, built-ins built only when named); an
    installed analyzer of a built-in's name replaces it."""
    wanted = None if only is None else set(only)
    made: dict[str, Analyzer] = {
        name: factory() for name, factory in builtins().items() if wanted is None or name in wanted
    }
    made.update(from_entry_points(points))
    return made if wanted is None else {n: a for n, a in made.items() if n in wanted}
