"""What a ``migrate`` job is asked to do (its parameters), and the source it names."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any

from nubis.migrate.throttle import TimeWindows
from nubis.security.policy import DEFAULT_TENANT, Principal

__all__ = ["KIND", "MigrationRequest", "default_name", "migration_principal"]

KIND = "migrate"


@dataclass(frozen=True)
class MigrationRequest:
    """A migration: from ``source`` (``dicom://AE@host:port``, an ``http(s)://`` DICOMweb
    root, or a folder, zip or tar path) into ``tenant``, under the ledger ``name``."""

    name: str
    source: str
    tenant: str = DEFAULT_TENANT
    since_last_run: bool = False
    max_mb_per_s: float | None = None
    concurrency: int = 1
    window: str | None = None
    # Only studies of these dates (YYYYMMDD, inclusive), where the source can say.
    date_from: str | None = None
    date_to: str | None = None
    # DIMSE: C-MOVE to ``move_ae`` (received by this process on ``listen_port``) or C-GET.
    retrieve: str = "move"
    calling_ae: str = "NUBIS"
    move_ae: str = "NUBIS"
    listen_host: str = "0.0.0.0"
    listen_port: int = 11113
    # DIMSE: the most C-FIND results the source gives (its cap), when it is known.
    find_limit: int | None = None
    # DICOMweb: an Authorization header value for the source.
    authorization: str | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise ValueError("a migration name has 1 to 64 characters")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_mb_per_s is not None and self.max_mb_per_s <= 0:
            raise ValueError("max-mb-per-s must be positive")
        if self.retrieve not in ("move", "get"):
            raise ValueError("retrieve is move (C-MOVE) or get (C-GET)")
        TimeWindows(self.window)  # ValueError names a malformed window

    def params(self) -> dict[str, Any]:
        # The source's credentials stay out of the job table, which `nubis jobs show` prints.
        return {k: v for k, v in asdict(self).items() if k != "authorization"}

    @classmethod
    def from_params(cls, params: dict[str, Any], **secrets: Any) -> MigrationRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in known}, **secrets)


def default_name(source: str) -> str:
    """A ledger name for ``source`` when the operator gives none: the source itself, or its
    head and a digest when it is longer than a name may be."""
    if len(source) <= 64:
        return source
    return f"{source[:47]}~{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def migration_principal(name: str, tenant: str) -> Principal:
    """The service account a migration stores as: it writes and reads back what it wrote to
    reconcile (the radiologist's actions in its tenant), recorded as ``migrate:<name>``."""
    return Principal(
        f"migrate:{name}", tenant, frozenset({"radiologist"}), via="cli", auth_method="cli"
    )
