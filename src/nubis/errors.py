"""One error tree for the whole archive.

Every error a client may see derives from :class:`NubisError` and carries the HTTP status and the
DICOM status (PS3.7 Annex C, PS3.4 B.2.3, PS3.18 10.5.3) that each front door answers with, so
DICOMweb and DIMSE report the same failure the same way. ``reason`` is safe to show a client: it
names what is wrong and never carries a stack trace or internal paths.
"""

from __future__ import annotations


class NubisError(Exception):
    """Base of every error that is reported to a client."""

    http_status: int = 500
    dimse_status: int = 0x0110  # Processing failure
    # Seconds after which a retry may succeed, sent as Retry-After (RFC 9110 10.2.3) with a
    # 503; None for failures that a retry does not cure.
    retry_after: int | None = None

    def __init__(self, reason: str, *, dimse_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if dimse_status is not None:
            self.dimse_status = dimse_status

    def http_headers(self) -> dict[str, str]:
        """Header fields the HTTP answer to this error must carry (e.g. Content-Range)."""
        return {}


class BadRequest(NubisError):
    """The request itself is malformed (bad query key, range, UID, header)."""

    http_status = 400
    dimse_status = 0xC000  # Cannot understand


class RangeNotSatisfiable(NubisError):
    """The Range of a request is invalid or lies outside the value (RFC 9110 14.2, 15.5.17):
    416 with Content-Range: bytes */<length>, the length of the value (14.4)."""

    http_status = 416
    dimse_status = 0xC000

    def __init__(self, reason: str, *, length: int) -> None:
        super().__init__(reason)
        self.length = length

    def http_headers(self) -> dict[str, str]:
        return {"content-range": f"bytes */{self.length}"}


class NotFound(NubisError):
    """The resource does not exist, or the caller may not know that it exists."""

    http_status = 404
    dimse_status = 0xC000


class Unauthorized(NubisError):
    """No credentials, or credentials that do not authenticate (unknown, expired, revoked,
    bad signature). HTTP 401 with a WWW-Authenticate challenge."""

    http_status = 401
    dimse_status = 0x0124  # Refused: not authorized (PS3.7 Annex C)


class Forbidden(NubisError):
    """Authenticated, but no role of the caller allows the action (whatever the resource, so
    the refusal says nothing about what exists; out-of-scope studies are NotFound)."""

    http_status = 403
    dimse_status = 0x0124  # Refused: not authorized (PS3.7 Annex C)


class NotAcceptable(NubisError):
    """No representation the client accepts can be produced (PS3.18 8.7.5)."""

    http_status = 406
    dimse_status = 0xC000


class UnsupportedMediaType(NubisError):
    """The request body is not of a media type the resource accepts."""

    http_status = 415
    dimse_status = 0xC000


class TooManyRequests(NubisError):
    """Refused for now, to protect the archive (RFC 6585 4: 429, with Retry-After): a login
    locked after failed passwords (nubis.security.throttle). Nothing was checked."""

    http_status = 429
    dimse_status = 0x0124  # Refused: not authorized (PS3.7 Annex C)

    def __init__(self, reason: str, *, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PayloadTooLarge(NubisError):
    http_status = 413
    dimse_status = 0xA700


class InvalidInstance(NubisError):
    """A stored object was refused; ``dimse_status`` is its PS3.18 10.5.3 failure reason.

    Typical reasons: 0xC000 (not a DICOM PS3.10 file, truncated), 0xA900 (data set does not match
    SOP class: missing or invalid UIDs), 0xC122 (transfer syntax not supported).
    """

    http_status = 409
    dimse_status = 0xC000


class DuplicateInstance(NubisError):
    """A different object already exists under this SOP Instance UID (PS3.7 C.4.2: 0x0111)."""

    http_status = 409
    dimse_status = 0x0111


class StorageUnavailable(NubisError):
    """The blob store or index cannot take the write now; nothing was acknowledged."""

    http_status = 503
    dimse_status = 0xA700  # Out of resources
    retry_after = 5  # the S3 client has already retried with backoff for about this long


class InsufficientStorage(NubisError):
    """The archive's disk is below its free-space floor (``min_free_disk``): new objects are
    refused before the disk fills, so the index and the audit trail keep room. HTTP 507
    (RFC 4918 11.5), C-STORE and STOW-RS failure reason 0xA700 Refused: Out of Resources
    (PS3.4 Table B.2-1)."""

    http_status = 507
    dimse_status = 0xA700


class NotReady(StorageUnavailable):
    """The archive is starting or stopping."""

    retry_after = 2


class RestoreRequired(StorageUnavailable):
    """The object is in an archive storage class (S3 Glacier, Deep Archive) and must be
    restored before it can be read; the reason says whether a restore was requested now or is
    under way. HTTP 503 / DIMSE 0xA700: retry later, nothing is wrong with the object."""

    # An expedited Glacier restore takes 1-5 minutes, a standard one 3-5 hours: a client
    # polling every 5 minutes neither waits long nor floods the archive.
    retry_after = 300


class BlobUnreadable(NubisError):
    """Stored bytes fail authentication: tampered, truncated, or not the blob of this object.

    Raised by the encrypted blob store when an AES-GCM tag, the wrapped data key or the header
    does not verify, including when a blob was moved under another object's UIDs. Never
    answered with the bytes: a 500 with this reason, or a broken stream if the response had
    already started.
    """

    http_status = 500
    dimse_status = 0x0110  # Processing failure


class BlobCorrupted(NubisError):
    """A stored object's bytes no longer have the size and SHA-256 recorded at ingest
    (nubis.blobs.integrity). Never answered with the bytes: a 500 with this reason, a broken
    stream if the response had already started, a failed C-STORE sub-operation."""

    http_status = 500
    dimse_status = 0x0110  # Processing failure


class UnknownBackend(NubisError):
    """A blob store or key provider URL names no backend nubis has (or one whose extra is not
    installed): a configuration error, found at start."""

    http_status = 500


class KeyUnavailable(NubisError):
    """A key needed to read or write a blob cannot be had (keyring unreadable, KMS down,
    unknown key id). HTTP 424 Failed Dependency, C-STORE 0xA700 (design guide rule 15)."""

    http_status = 424
    dimse_status = 0xA700


class KeyErased(KeyUnavailable):
    """The object's patient key was crypto-shredded: its bytes can never be read again."""

    http_status = 410
    dimse_status = 0x0110


class WorkitemRefused(NubisError):
    """A Unified Procedure Step request that the workitem's state or the Transaction UID
    refuses (PS3.4 Table CC.1.1-2): its UPS failure status (0xC300-0xC312) and the HTTP
    status PS3.18 11.6.3, 11.7.3 and 11.8.3 give it. The reason also goes into a Warning header,
    where UPS-RS clients read it; it names states and statuses, never the workitem's data."""

    def __init__(self, reason: str, *, http_status: int, dimse_status: int) -> None:
        super().__init__(reason, dimse_status=dimse_status)
        self.http_status = http_status

    def http_headers(self) -> dict[str, str]:
        return {"warning": f'299 nubis "{self.reason} (0x{self.dimse_status:04X})"'}


class Conflict(NubisError):
    """The request does not fit the resource's current state (RFC 9110 15.5.10), e.g. undoing
    a correction that later corrections of the same study build on."""

    http_status = 409
    dimse_status = 0xC000


class Gone(NubisError):
    """What was asked for existed and was removed for good (RFC 9110 15.5.11), e.g. change
    feed entries past their retention period."""

    http_status = 410
    dimse_status = 0xC000


class OnLegalHold(Conflict):
    """A deletion (DELETE, retention, key shredding) of something a legal hold covers. The
    reason names the hold by its id and level only: the hold's own reason may name the matter."""

    def __init__(self, hold_id: int, level: str) -> None:
        super().__init__(
            f"under legal hold {hold_id} (on the {level}): nothing it covers can be deleted "
            "or shredded until an admin releases it"
        )
        self.hold_id = hold_id
