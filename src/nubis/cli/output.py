"""Where the command line prints: data on stdout, messages on stderr, both as plain text.

What is printed holds values: help texts, paths, names, error reasons, some typed by the user.
rich reads square brackets as markup, so ``[/PREFIX]`` in a help text crashed ``nubis settings``
(issue #9) and ``[x]`` in a file name vanished. Markup is therefore off; colour is a ``style``.
"""

from __future__ import annotations

from rich.console import Console

out = Console(markup=False)
console = Console(stderr=True, markup=False)

__all__ = ["console", "out"]
