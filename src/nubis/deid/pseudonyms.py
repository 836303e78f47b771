"""Pseudonyms of one research project: keyed HMAC-SHA256 under the project key.

The same PatientID, UID or AE title gives the same pseudonym for one key and an unrelated one
for another, so a project's exports and on-the-fly views agree with one another, and two
projects cannot be linked. Without the key a pseudonym cannot be reversed or recomputed.
"""

from __future__ import annotations

import hashlib
import hmac

from pydicom.uid import UID_dictionary

_UID_ROOT = "2.25."  # PS3.5 B.2: a UID derived from a UUID


class Pseudonyms:
    """The pseudonyms of one project key; ``uid_map`` records every UID remapped so far."""

    def __init__(self, project_key: bytes) -> None:
        if len(project_key) < 16:
            raise ValueError("a project key has at least 16 bytes")
        self._key = project_key
        self.uid_map: dict[str, str] = {}

    def _digest(self, purpose: str, value: str) -> bytes:
        message = purpose.encode() + b"\x00" + value.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def patient_id(self, patient_id: str) -> str:
        """The pseudonymous Patient ID (LO, 16 characters)."""
        return "P" + self._digest("patient", patient_id.strip()).hex()[:15].upper()

    def patient_name(self, patient_id: str) -> str:
        """The pseudonymous Patient's Name: family name ANON, given name the pseudonym."""
        return "ANON^" + self.patient_id(patient_id)

    def date_shift(self, patient_id: str, low: int, high: int) -> int:
        """The whole number of days every date of this patient moves by, in [low, high]."""
        span = high - low + 1
        drawn = int.from_bytes(self._digest("date-shift", patient_id.strip())[:8], "big")
        return low + drawn % span

    def uid(self, uid: str) -> str:
        """The remapped UID: 2.25. and the integer of a UUID (version 8) drawn from the HMAC.

        Well-known UIDs (SOP classes, transfer syntaxes, coding schemes) identify no one and
        are kept, so that the remapped object still names its class.
        """
        uid = uid.strip("\x00 ")
        if not uid or uid in UID_dictionary:
            return uid
        found = self.uid_map.get(uid)
        if found is None:
            raw = bytearray(self._digest("uid", uid)[:16])
            raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom (RFC 9562 5.8)
            raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC's variant
            found = _UID_ROOT + str(int.from_bytes(raw, "big"))
            self.uid_map[uid] = found
        return found

    def token(self, purpose: str, value: str, length: int) -> str:
        """A short pseudonym for another identifying value (an AE title, a label)."""
        return self._digest(purpose, value.strip()).hex()[:length].upper()
