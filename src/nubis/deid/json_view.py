"""The de-identified view of an object's DICOM JSON metadata (PS3.18 F.2), as the researcher's
QIDO-RS and metadata answers need it: the same walk as the Part-10 output, so the view and an
export of the same project agree on every value and pseudonym."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset

from nubis.deid.engine import DeidReport, deidentify_elements
from nubis.deid.profile import Profile
from nubis.deid.pseudonyms import Pseudonyms

_BULK_MARK = b"\x00nubis-bulk\x00"


def deidentify_json(
    metadata: Mapping[str, Any], profile: Profile, project_key: bytes
) -> tuple[dict[str, Any], DeidReport]:
    """The de-identified DICOM JSON of one instance, and its report.

    A BulkDataURI is kept where its element is, with every UID in it replaced by its remapped
    UID (the URI names the de-identified object). Raises ExcludedObject as deidentify does.
    """
    uris: list[str] = []

    def hold(tag: str, vr: str, uri: str) -> bytes:
        uris.append(uri)
        return _BULK_MARK + str(len(uris) - 1).encode()

    dataset = Dataset.from_json(dict(metadata), bulk_data_uri_handler=hold)
    pseudonyms = Pseudonyms(project_key)
    out, report, _decision = deidentify_elements(dataset, profile, pseudonyms)
    result = out.to_json_dict()
    if uris:
        _restore_uris(result, uris, pseudonyms.uid_map)
    return result, report


def _restore_uris(node: dict[str, Any], uris: list[str], uid_map: Mapping[str, str]) -> None:
    for element in node.values():
        inline = element.get("InlineBinary")
        if inline is not None:
            raw = base64.b64decode(inline)
            if raw.startswith(_BULK_MARK):
                del element["InlineBinary"]
                element["BulkDataURI"] = _remap_uids(uris[int(raw[len(_BULK_MARK) :])], uid_map)
        if element.get("vr") == "SQ":
            for item in element.get("Value", []):
                _restore_uris(item, uris, uid_map)


def _remap_uids(uri: str, uid_map: Mapping[str, str]) -> str:
    # Longest first: a UID may be the prefix of another (1.2.3 and 1.2.3.4).
    for original in sorted(uid_map, key=len, reverse=True):
        uri = uri.replace(original, uid_map[original])
    return uri
