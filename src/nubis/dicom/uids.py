"""What the archive takes for a UID: the syntax of PS3.5 9.1, and the wider set of values real
archives hold under that name and the archive still serves (issue 12).

A conformant UID is digits and dots, in non-empty components, at most 64 characters. Some
systems made their own: pydicom's ``bad_sequence.dcm`` names its study, series and instance by
64 hexadecimal digits. Such a value identifies its object as well as a UID does, so ingest takes
it with a warning (nubis.dicom.leniency) and every front door names the object by it: DICOMweb
paths, QIDO-RS and C-FIND keys, WADO-URI parameters, the web pages. What is usable is kept
narrow, so that it is a safe URL path segment and file-name part everywhere, and so that no
name or other text is taken for an identifier (it would then be shown in URLs and logs as UIDs
are): hexadecimal digits and dots, 1 to 64 of them, at least one a decimal digit, not only dots
and no two in a row (no ``.`` or ``..`` segment). Anything else (a word, a space, a control
character, any other character, an empty or longer value) names no object and is refused.
"""

from __future__ import annotations

import re

MAX_LENGTH = 64  # PS3.5 Table 6.2-1, VR UI
_CONFORMANT = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_USABLE = re.compile(r"[0-9A-Fa-f.]{1,64}")
_DECIMAL = re.compile(r"[0-9]")


def is_conformant(value: str) -> bool:
    """Whether ``value`` is a UID as PS3.5 9.1 defines it (leading zeros in a component
    included: that lapse is told apart by nubis.dicom.leniency)."""
    return len(value) <= MAX_LENGTH and _CONFORMANT.fullmatch(value) is not None


def is_usable(value: str) -> bool:
    """Whether ``value`` is conformant or one of the non-conformant values the archive names
    objects by (the module docs): a superset of :func:`is_conformant`."""
    return (
        _USABLE.fullmatch(value) is not None
        and _DECIMAL.search(value) is not None
        and ".." not in value
    )
