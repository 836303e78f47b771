"""The replica as the ``replicate`` job reaches it: another nubis, over DICOMweb.

A store is one STOW-RS request of one part (PS3.18 10.5) carrying ``Content-Digest: sha-256``
(RFC 9530): the replica refuses a part whose bytes have another digest, and keeps the SHA-256
it computed while receiving, so its answer is the verification, at no extra transfer. It is
verified when the replica answers 200, or 202 without the coercion warning 0xB000 (PS3.18
10.5.3: anything but 0xB000 keeps the bytes as sent); an object the replica holds already
with that digest is answered as stored, so re-sending is harmless (at-least-once). A delete is
a DELETE of the study, series or instance (PS3.18 10.4 DELETE); 404 means it is gone already.

A correction and a crypto-shred go to the replica's admin API, at the root its DICOMweb path
``/dicom-web`` hangs from: a correction as ``POST /corrections`` updating the study to the
attributes the primary's correction left (idempotent: applied twice, the study shows the
same; 404, a study the replica never had, is done), a shred as ``POST /keys/shred-patient``
(idempotent: a repeat erases no key and is answered 200).

The API key goes into the Authorization header of each request and nowhere else: errors name
the replica's address and the HTTP status, never the header.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from nubis.logs import redact_url

__all__ = ["DicomWebReplica", "ReplicaRefused", "ReplicaUnreachable", "reason_of"]

_TIMEOUT = 120
_COERCED = 0xB000
_WARNING_REASON, _FAILURE_REASON = "00081196", "00081197"
_REFERENCED, _FAILED = "00081199", "00081198"


class ReplicaUnreachable(Exception):
    """The replica did not answer, answered that it cannot now (5xx, 408, 429), or does not
    take the credential (401, 403): nothing can go there now; try later."""


class ReplicaRefused(Exception):
    """The replica answered and did not take the change (4xx): this entry waits, other studies
    go on."""


_DICOMWEB_PATH = "/dicom-web"
# The replica's Reason must fit its limit (nubis.services.corrections.MAX_REASON).
_MAX_REASON = 1024


class DicomWebReplica:
    def __init__(self, root: str, api_key: str) -> None:
        self.root = root.rstrip("/")
        self.shown = redact_url(self.root)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Where the replica's admin API is: "" (unknown) unless the root is nubis's own path.
        self.site = self.root[: -len(_DICOMWEB_PATH)] if self.root.endswith(_DICOMWEB_PATH) else ""

    def correct(self, study_uid: str, correction: int, reason: str, attrs: dict[str, Any]) -> None:
        """Set ``attrs`` (keyword -> DICOM text or None) on the replica's study: what the
        primary's correction ``correction`` left."""
        body = {
            "action": "update-study",
            "study": study_uid,
            "set": attrs,
            "reason": f"correction {correction} at the primary: {reason}"[:_MAX_REASON],
        }
        status = self._post_admin("/corrections", body)
        if status not in (200, 201, 404):
            raise ReplicaRefused(
                f"the replica refused correction {correction} of study {study_uid}: HTTP {status}"
            )

    def shred(self, patient_id: str) -> None:
        """Erase the patient's keys at the replica (done already counts as done)."""
        status = self._post_admin("/keys/shred-patient", {"patient": patient_id})
        if status != 200:
            # 404: the replica encrypts nothing at rest, so no shred can erase its copies there.
            raise ReplicaRefused(f"the replica refused a patient's crypto-shred: HTTP {status}")

    def _post_admin(self, path: str, body: dict[str, Any]) -> int:
        if not self.site:
            raise ReplicaRefused(
                f"replicate_to ({self.shown}) does not end in {_DICOMWEB_PATH}: the replica's "
                "admin API (corrections, crypto-shreds) cannot be found"
            )
        data = json.dumps(body, ensure_ascii=False).encode()
        status, _ = self._send(
            "POST",
            path,
            data,
            {"Content-Type": "application/json", "Content-Length": str(len(data))},
            root=self.site,
        )
        return status

    def store(
        self,
        study_uid: str,
        sop_instance_uid: str,
        size: int,
        sha256_hex: str,
        chunks: Iterator[bytes],
    ) -> None:
        """STOW-RS one object of ``size`` bytes; returns once the replica holds it with
        SHA-256 ``sha256_hex``. ReplicaRefused or ReplicaUnreachable otherwise."""
        boundary = secrets.token_hex(16)
        digest = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        head = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n"
            f"Content-Digest: sha-256=:{digest}:\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            yield from chunks
            yield tail

        status, answer = self._send(
            "POST",
            f"/studies/{quote(study_uid)}",
            body(),
            {
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Content-Length": str(len(head) + size + len(tail)),
                "Accept": "application/dicom+json",
            },
        )
        if status == 200:
            return
        if status == 202:
            reasons = [_first(item, _WARNING_REASON) for item in _items(answer, _REFERENCED)]
            if _COERCED in reasons:
                raise ReplicaRefused(
                    f"the replica keeps {sop_instance_uid} otherwise than sent (0xB000): "
                    "not byte-exact"
                )
            return
        failures = [_first(item, _FAILURE_REASON) for item in _items(answer, _FAILED)]
        codes = ", ".join(f"0x{c:04X}" for c in failures if c is not None) or "no reason"
        raise ReplicaRefused(f"the replica refused {sop_instance_uid}: HTTP {status} ({codes})")

    def delete(self, study_uid: str, series_uid: str | None, sop_instance_uid: str | None) -> None:
        """Delete what the primary deleted; done when the replica no longer holds it."""
        path = f"/studies/{quote(study_uid)}"
        if series_uid is not None:
            path += f"/series/{quote(series_uid)}"
            if sop_instance_uid is not None:
                path += f"/instances/{quote(sop_instance_uid)}"
        status, _ = self._send("DELETE", path, None, {"Accept": "application/dicom+json"})
        if status not in (200, 202, 204, 404):
            raise ReplicaRefused(f"the replica refused to delete {path}: HTTP {status}")

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
        *,
        root: str | None = None,
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"{root or self.root}{path}",
            data=body,
            method=method,
            headers={**headers, **self._auth},
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
            if status >= 500 or status in (401, 403, 408, 429):
                # The replica's reason says which: a key it does not take, a replica_writer
                # that is not this key's user (nubis reasons carry no patient data).
                said = reason_of(answer)
                raise ReplicaUnreachable(
                    f"{self.shown} answered HTTP {status}" + (f": {said}" if said else "")
                ) from None
            return status, answer
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise ReplicaUnreachable(f"{self.shown} cannot be reached: {reason}") from None


def reason_of(answer: bytes) -> str:
    """The ``reason`` of a nubis error body (nubis.web.errors), cut to 300 characters."""
    try:
        data = json.loads(answer or b"{}")
    except ValueError:
        return ""
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason[:300] if isinstance(reason, str) else ""


def _items(answer: bytes, tag: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(answer or b"{}")
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    items = (data.get(tag) or {}).get("Value") or []
    return [i for i in items if isinstance(i, dict)]


def _first(item: dict[str, Any], tag: str) -> int | None:
    values = (item.get(tag) or {}).get("Value") or []
    return int(values[0]) if values and isinstance(values[0], int) else None
