"""Every setting of the archive, declared once: its type, default and help text.

``nubis --help`` and ``nubis settings`` print this table, so the documentation of a setting
cannot drift from its declaration. Where a value comes from, and how settings are checked
together, is nubis.config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def env_var(self) -> str:
        return "NUBIS_" + self.name.upper()


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


_PARSERS: dict[str, Callable[[str], Any]] = {"Path": Path, "str": str, "int": int, "bool": _bool}


def _setting(default: Any, help: str, parse: Callable[[str], Any] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """The archive's configuration; the only place a setting is declared."""

    data_dir: Path = _setting(Path("nubis-data"), "Folder for the embedded index, blobs and spool.")
    host: str = _setting("127.0.0.1", "Address the HTTP server binds to.")
    http_port: int = _setting(8042, "HTTP port; DICOMweb is served under /dicom-web.")
    workers: int = _setting(
        0,
        "HTTP worker processes sharing the port and the index; 0 = one per CPU core. Python "
        "runs one core per process, so more workers store and serve more at once.",
    )
    index: str = _setting(
        "",
        "Index database URL: sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
        "(psycopg 3; libpq's PG* variables and ~/.pgpass apply). Empty: the SQLite file "
        "index.sqlite in data_dir.",
    )
    blobs: str = _setting(
        "",
        "Blob store URL: file:///PATH, or s3://BUCKET/PREFIX?endpoint=URL&region=R&ca_bundle=PEM "
        "(credentials from the AWS variables or files). Empty: the folder blobs/ in data_dir.",
    )
    on_conflict: str = _setting(
        "reject",
        "A different object arriving under a stored SOP Instance UID: 'reject' keeps the stored "
        "one and answers 0x0111 (HTTP 409); 'overwrite' replaces it.",
        _choice("reject", "overwrite"),
    )
    patient_conflict: str = _setting(
        "refuse",
        "An object naming another Patient ID than its stored study, or a Series Instance UID "
        "another study holds: 'refuse' answers 0xA900 (HTTP 409); 'quarantine' stores it under "
        "its own study and holds that study in quarantine, seen by admins only until released "
        "(nubis storage release), with warning 0xB007. For migrations.",
        _choice("refuse", "quarantine"),
    )
    qido_default_limit: int = _setting(
        1000, "QIDO-RS results per page when the request gives no limit (page on with offset)."
    )
    qido_max_limit: int = _setting(
        10000, "Largest QIDO-RS page; a larger limit is lowered to this with a Warning header."
    )
    stow_max_bytes: int = _setting(
        64 << 30,
        "Largest STOW-RS request body in bytes; a larger Content-Length is refused (413) "
        "before the body is read, a body without one when it reaches this size: the parts "
        "received whole before then are stored and listed in the 413's response.",
    )
    stow_max_parts: int = _setting(
        10000,
        "Most parts (objects) in one STOW-RS request; the part after them is refused (413), "
        "the ones before are stored and listed in the 413's response.",
    )
    bulk_threshold: int = _setting(
        1024, "Binary values longer than this many bytes are sent as BulkDataURI in metadata."
    )
    orphan_grace_seconds: int = _setting(
        900,
        "A blob with no index row is reaped once it is older than this (an in-flight store "
        "writes its blob before its row).",
    )
    verify_reads: bool = _setting(
        True,
        "Check each object's SHA-256 while it is served whole; a mismatch aborts the response "
        "instead of sending bad bytes. Costs about 0.6 ms of CPU per MB served.",
    )
    durable: bool = _setting(
        True, "fsync blobs and the index before acknowledging a store. Off only for throwaway data."
    )
    encrypt_at_rest: bool = _setting(
        True,
        "Encrypt every stored object and spool file (AES-256-GCM, a fresh data key per object "
        "wrapped by a keyring KEK and a per-patient key). Off: new objects are stored in "
        "plaintext; encrypted ones stay readable while the keyring exists. Costs about 5% of "
        "STOW-RS throughput; WADO-RS is faster encrypted, its AES-GCM tags standing in for the "
        "SHA-256 check (bench/security_cost.py).",
    )
    keyring: str = _setting(
        "",
        "Key provider for encryption at rest: file:///PATH of a local keyring (created mode "
        "0600 on first use); or, for several nodes, index+file:///PATH or index+env:VARIABLE: "
        "patient keys in the index, KEKs from a read-only secret given to every node (nubis "
        "keys new-secret). Empty: keyring.jsonl in data_dir. Back keys up apart from the data: "
        "losing them loses every object; a data backup without them is unreadable.",
    )
    dimse_port: int = _setting(
        11112, "DICOM (DIMSE) port of nubis serve, PS3.8; 0 turns the DIMSE front door off."
    )
    ae_title: str = _setting("NUBIS", "The archive's own AE title for DIMSE (PS3.8 7.1.1.2).")
    dimse_host: str = _setting("", "Address the DIMSE ports bind to. Empty: the same as host.")
    dimse_tls_port: int = _setting(
        2762,
        "DICOM TLS port (PS3.15 B.12, TLS 1.2/1.3 only); listened on only when "
        "dimse_tls_cert is set.",
    )
    dimse_tls_cert: str = _setting(
        "", "PEM certificate chain of the DICOM TLS port. Empty: no TLS port."
    )
    dimse_tls_key: str = _setting(
        "", "PEM private key of dimse_tls_cert. Empty: the key is in the certificate file."
    )
    dimse_tls_ca: str = _setting(
        "",
        "PEM CA bundle; when set, DICOM TLS callers must present a certificate it signed.",
    )
    dimse_peers: str = _setting(
        "",
        "Peer file of earlier versions (TOML), imported into the index's peer table once at "
        "start and renamed *.imported; the table is edited with nubis dimse peers. "
        "Empty: dimse-peers.toml in data_dir.",
    )
    dimse_peers_cache_seconds: int = _setting(
        5,
        "Each process keeps the DIMSE peer table this long before reading it again; a change "
        "or removal reaches every node within it (an AE not in the table re-reads it at once).",
    )
    dimse_unknown_callers: str = _setting(
        "loopback",
        "Callers not in the peer table: 'loopback' lets them in only from 127.0.0.1/::1, "
        "'refuse' rejects them, 'allow' lets anyone in (for closed networks only).",
        _choice("loopback", "refuse", "allow"),
    )
    dimse_max_associations: int = _setting(
        32, "Concurrent DIMSE associations; more are rejected as transient (local limit)."
    )
    dimse_response_seconds: int = _setting(
        60,
        "How long the DIMSE server waits for the answer to a message it sent: a C-STORE "
        "sub-operation of a C-GET or C-MOVE, a storage commitment N-EVENT-REPORT on the "
        "N-ACTION's association. A peer silent this long fails that operation.",
    )
    dimse_commitment_retry_seconds: int = _setting(
        30,
        "A storage commitment report (N-EVENT-REPORT, PS3.4 J.3.3) the requesting AE did not "
        "take (its listener down or refusing) is retried after this many seconds, doubling up "
        "to an hour, by whichever node runs jobs; pending reports survive restarts.",
    )
    dimse_commitment_give_up_seconds: int = _setting(
        86400,
        "A storage commitment report still not delivered this many seconds after its N-ACTION "
        "is dropped, with an ERROR log and an audit record. Cover the longest time a requesting "
        "AE waits for its report (its conformance statement, PS3.4 J.3.6.1.1).",
    )
    dimse_accept_any_called_ae: bool = _setting(
        False,
        "Admit DIMSE associations whatever Called AE Title they name. Off: one naming another "
        "than ae_title is rejected (A-ASSOCIATE-RJ, called-AE-title-not-recognized, PS3.8 "
        "7.1.1.3); on, for callers set up with a wrong one.",
    )
    audit_source_id: str = _setting(
        "",
        "AuditSourceID put on every audit record (PS3.15 A.5.1). Empty: the ae_title.",
    )
    audit_key: str = _setting(
        "",
        "Ed25519 key that signs audit checkpoints (created 0600 when missing; its public half "
        "beside it as .pub). Empty: audit-signing.key in data_dir.",
    )
    audit_checkpoint_records: int = _setting(
        1000, "Sign the head of the audit chain every this many records (0: by time only)."
    )
    audit_checkpoint_seconds: int = _setting(
        60,
        "Sign the head of the audit chain when records have waited this many seconds "
        "unsigned (0: by count only). Records removed from the end since the last signed head "
        "cannot be detected.",
    )
    audit_trail: bool = _setting(
        True,
        "Record every access in the audit trail. Off only to measure what the trail costs "
        "(bench/security_cost.py): nothing is recorded then, and nubis serve refuses to start "
        "unless it listens on a loopback host.",
    )
    audit_read_flush_ms: int = _setting(
        20,
        "Commit the audit records of reads (retrievals, queries) in batches at most this many "
        "milliseconds after the read was answered, off the request path; a crash loses at most "
        "this window of read records, never a write's. 0: every read waits for its record.",
    )
    audit_read_max_pending: int = _setting(
        1000,
        "At most this many read records wait uncommitted; further reads wait for a commit.",
    )
    audit_syslog: str = _setting(
        "",
        "Syslog collector for audit messages (DICOM PS3.15 A.5 XML, RFC 5424 over TLS with RFC "
        "5425 framing): tls://HOST:PORT, or tcp://HOST:PORT on closed networks. Records wait "
        "behind a persistent cursor while it is down. Empty: no forwarding.",
    )
    audit_syslog_ca: str = _setting(
        "", "PEM CA bundle that signed the syslog collector's certificate. Empty: system CAs."
    )
    audit_syslog_cert: str = _setting(
        "", "PEM client certificate presented to the syslog collector (mutual TLS). Empty: none."
    )
    audit_syslog_key: str = _setting(
        "", "PEM private key of audit_syslog_cert. Empty: the key is in the certificate file."
    )
    auth: bool = _setting(
        True,
        "Require authentication on HTTP (HTTP Basic, API keys, OIDC bearer tokens). Off only "
        "on a loopback host, for development: every caller is then an admin.",
    )
    admin_token: str = _setting(
        "",
        "Bootstrap admin API key for automation (at least 32 characters): user 'admin' may "
        "authenticate with 'Authorization: Bearer <token>'. Only its SHA-256 is stored; "
        "removing the setting revokes it. Empty: none.",
    )
    api_key_days: int = _setting(
        90, "Lifetime of API keys made by POST /-/login and nubis apikeys create (0: no expiry)."
    )
    tls_cert: str = _setting(
        "",
        "PEM certificate chain for HTTPS (TLS 1.2 and 1.3 only). Empty: plain HTTP, allowed "
        "only on a loopback host.",
    )
    tls_key: str = _setting(
        "", "PEM private key of tls_cert. Empty: the key is in the certificate file."
    )
    oidc_issuer: str = _setting(
        "",
        "OpenID Connect issuer whose bearer tokens (JWT) are accepted, e.g. "
        "https://login.example.org/realms/x; must equal the tokens' iss. Empty: no OIDC.",
    )
    oidc_audience: str = _setting(
        "", "Audience the OIDC tokens must name in aud (this archive's client id)."
    )
    oidc_jwks_url: str = _setting(
        "",
        "URL of the issuer's JSON Web Key Set. Empty: jwks_uri from the issuer's "
        "/.well-known/openid-configuration.",
    )
    oidc_algorithms: str = _setting(
        "RS256,ES256",
        "Signature algorithms accepted for OIDC tokens (comma-separated; 'none' and HMAC "
        "algorithms are refused).",
    )
    oidc_roles_claim: str = _setting(
        "roles",
        "Claim holding the caller's roles or groups (dotted path, e.g. realm_access.roles); "
        "a list or a space/comma-separated string.",
    )
    oidc_role_map: str = _setting(
        "",
        "Map claim values to nubis roles: 'group=role,group2=role2'. Empty: claim values that "
        "are nubis role names are used as they are.",
    )
    oidc_tenant_claim: str = _setting(
        "",
        "Claim naming the caller's tenant (dotted path). Empty: every OIDC caller is in "
        "oidc_tenant.",
    )
    oidc_tenant: str = _setting("default", "Tenant of OIDC callers whose token names none.")
    oidc_leeway_seconds: int = _setting(
        60, "Clock skew allowed when checking the exp, nbf and iat of OIDC tokens."
    )
    break_glass_roles: str = _setting(
        "radiologist,referrer",
        "Roles that may ask for emergency read access to their whole tenant with the header "
        "'X-Nubis-Break-Glass: <reason>' (logged at WARNING and audited). Empty: nobody.",
    )
    trusted_proxies: str = _setting(
        "",
        "Reverse proxies (addresses or CIDR networks, comma-separated) whose X-Forwarded-For "
        "and X-Forwarded-Proto are believed: the caller's address in audit records and login "
        "throttling is then the one the proxy saw. Empty: nobody; the address is the TCP peer's.",
    )
    login_max_failures_per_user: int = _setting(
        10,
        "Wrong passwords for one user name within login_failure_window_seconds that lock its "
        "password logins (HTTP 429 with Retry-After; API keys and OIDC still work), on every "
        "worker and node. 0: no per-user lockout.",
    )
    login_max_failures_per_address: int = _setting(
        30,
        "Wrong passwords from one source address within login_failure_window_seconds that lock "
        "password logins from it (behind a proxy, set trusted_proxies). 0: no per-address "
        "lockout.",
    )
    login_failure_window_seconds: int = _setting(
        900, "Window in which wrong passwords are counted towards a login lockout."
    )
    login_lockout_seconds: int = _setting(
        60,
        "First login lockout; each further one of the same user name or address doubles, up "
        "to login_max_lockout_seconds. A lockout's start is logged and audited (Security Alert).",
    )
    login_max_lockout_seconds: int = _setting(3600, "Longest login lockout.")
    session_idle_minutes: int = _setting(
        30, "A web face session ends after this many minutes without a request."
    )
    session_max_hours: int = _setting(
        12, "A web face session ends this many hours after sign-in, however busy."
    )
    min_free_disk: str = _setting(
        "1GiB",
        "Free space kept on each local file system the archive writes objects to (spool, "
        "file:// blobs, SQLite index), as a size (500MB, 1GiB) or a share of the file system "
        "(5%): below it STOW-RS answers 507 (0xA700) and C-STORE 0xA700, while reads, the index "
        "and the audit trail keep working. 0: no floor. S3 has none.",
    )
    http_header_timeout_seconds: int = _setting(
        20,
        "An HTTP request's line and headers must arrive within this many seconds of the "
        "connection opening (or of its first byte on a kept-alive connection); otherwise 408 "
        "and the connection is closed.",
    )
    http_body_timeout_seconds: int = _setting(
        60,
        "A request body from which no byte arrives for this many seconds (while the archive is "
        "reading it) is cut: 408, the connection closed, nothing stored of the unfinished part.",
    )
    dimse_tenant: str = _setting(
        "default", "Tenant (partition) of DIMSE callers that dimse_principals does not map."
    )
    dimse_principals: str = _setting(
        "",
        "DIMSE callers as principals: 'AE=tenant:role,AE2@host=tenant:role'. Unlisted callers "
        "are in dimse_tenant with role radiologist if the peer table lets them query or "
        "retrieve, else modality (store only).",
    )
    jobs: bool = _setting(
        True,
        "Run background jobs (reap, verify, tier) in every nubis serve worker process. Jobs "
        "live in the index, so whichever node is free takes the next one. Off: this node runs "
        "none, and reaps in-process every 10 minutes instead.",
    )
    jobs_schedule: str = _setting(
        "reap=1h,tier=1d,storage-snapshot=1d",
        "Periodic jobs as KIND=EVERY (units s m h d w), queued once per period across all "
        "nodes; add verify=7d to re-read every blob weekly. Empty: none.",
    )
    heal_from: str = _setting(
        "",
        "Backup folders (comma-separated, tried in order) the verify job heals missing or "
        "damaged blobs from: a copy replaces a blob only if it has the digest its backup "
        "recorded and reads back as the object (docs/backup.md). Empty: verify only reports.",
    )
    jobs_lease_seconds: int = _setting(
        60,
        "A running job's claim lasts this long unless renewed (every third of it); a job whose "
        "node died is taken over by another node after this.",
    )
    jobs_poll_seconds: int = _setting(
        10, "Longest wait of an idle job runner before it looks for queued jobs again."
    )
    tiers: str = _setting(
        "hot=STANDARD,cold=STANDARD_IA,archive=GLACIER",
        "Storage tiers as NAME=TARGET, the first being where new objects go. TARGET is an S3 "
        "storage class, or for a tier other than the first a bucket of its own at the same "
        "endpoint with the same credentials, s3://BUCKET[/PREFIX][?storage_class=CLASS] "
        "(moves copy into it, check, then delete); for the folder store a folder (an absolute "
        "path, or a folder of that name under blobs/tiers/).",
    )
    lifecycle: str = _setting(
        "",
        "Rules the tier job applies, first match wins, e.g. 'modality=MG age<730d -> hot; "
        "unread>365d -> archive; unread>30d -> cold' (conditions modality=, partition=, "
        "unread>/<, age>/<; units h d w y). Empty: studies stay in the first tier unless pinned.",
    )
    storage_prices: str = _setting(
        "",
        "Price per GB-month of tiers for nubis storage report, as TIER=PRICE,... Tiers not "
        "given take the AWS S3 us-east-1 list price of their storage class (STANDARD 0.023, "
        "STANDARD_IA 0.0125, GLACIER 0.0036 USD).",
    )
    read_record_seconds: int = _setting(
        3600,
        "A study's last read (for unread> rules) is written at most once per this many seconds "
        "per process, so reads do not each cost a write.",
    )
    tier_compression: str = _setting(
        "",
        "Lossless compression a tier keeps its objects in, as TIER=CODEC,... (codecs htj2k, "
        "jpegls, j2k, rle, or a transfer syntax UID), e.g. 'cold=htj2k': the tier job "
        "re-encodes objects with uncompressed pixel data there, proves the pixels identical "
        "before replacing the original, and records its transfer syntax, which retrieval gives "
        "back on request. Objects under it are kept pixel-exact, no longer byte-exact. Empty: "
        "none.",
    )
    viewer_ohif_dir: str = _setting(
        "",
        "Folder of a prebuilt OHIF viewer (the dist/ of the npm package @ohif/app, as nubis ohif "
        "fetch leaves it), served at /ohif/ to signed-in browsers with an app-config.js nubis "
        "generates (DICOMweb of this archive, same origin). Empty: no OHIF.",
    )
    cors_origins: str = _setting(
        "",
        "Web origins (scheme://host[:port], comma-separated) whose scripts may call the "
        "archive cross-origin (CORS). Preflights are answered without credentials; the requests "
        "themselves still need them (Authorization or X-API-Key). Empty: none.",
    )
    public_url: str = _setting(
        "",
        "The archive's root URL as clients reach it, e.g. https://pacs.example.org: "
        "BulkDataURI, Retrieve URL and every other URL the archive builds start with it. Empty: "
        "built from each request (its Host, or Forwarded/X-Forwarded-Host from trusted_proxies).",
    )
    oidc_client_id: str = _setting(
        "",
        "Client id of this archive at the OIDC issuer, for browser sign-in (authorization code "
        "with PKCE): the sign-in page then offers 'Sign in with <issuer>'. Empty: no button.",
    )
    oidc_client_secret: str = _setting(
        "", "Client secret for oidc_client_id (sent to the token endpoint). Empty: a public client."
    )
    oidc_browser_token: str = _setting(
        "id_token",
        "Which token of the browser sign-in gives the session its roles and tenant: id_token, or "
        "access_token (a JWT for oidc_audience, as API callers present).",
        _choice("id_token", "access_token"),
    )
    oidc_scopes: str = _setting(
        "openid profile", "Scopes asked for at browser sign-in (openid is always asked for)."
    )
    log_level: str = _setting("info", "Log level.", _choice("debug", "info", "warning", "error"))
    log_format: str = _setting(
        "text",
        "Log lines as 'text' (time, level, logger, message) or 'json' (one object a line, for "
        "a log shipper); both name the HTTP request's X-Request-ID during a request.",
        _choice("text", "json"),
    )
    share_default_days: int = _setting(
        7, "A share link lasts this many days unless its creator chooses (1 to share_max_days)."
    )
    share_max_days: int = _setting(30, "The longest a share link may last, in days.")
    aggregate_min_cell: int = _setting(
        10,
        "Federated statistics: an aggregate cell counting fewer than this many (and at least "
        "one) is reported as '<k' with no number, and left out of the total (docs/analytics.md).",
    )
    replicate_to: str = _setting(
        "",
        "DICOMweb root of a replica (another nubis), e.g. https://dr.example.org/dicom-web: "
        "every store and delete of replicate_tenant goes into the outbox in its own commit, and "
        "the replicate job sends it there, verified by SHA-256 (docs/replication.md). Empty: no "
        "replica, no outbox.",
    )
    replicate_api_key: str = _setting(
        "",
        "API key of the replica's service user (an admin of its tenant there: it stores and "
        "deletes), sent as Authorization: Bearer. Never logged, never in a job's parameters.",
    )
    replicate_tenant: str = _setting(
        "default",
        "The tenant whose changes are replicated (the replica's service user's tenant there).",
    )
    replicate_delete_delay_days: int = _setting(
        0,
        "Hold deletes back this many days before the replica applies them (a mistake or "
        "ransomware undone from the replica meanwhile); later changes to the study wait too.",
    )
    replicate_every_seconds: int = _setting(
        10,
        "How often a replicate job is queued when none is running; each one sends what is due "
        "and keeps watching the outbox for new entries for a while before it ends.",
    )
    replicate_retry_max_seconds: int = _setting(
        300,
        "Longest wait before an entry the replica did not take is tried again (the wait "
        "doubles from 1 s up to this).",
    )
    retention_rules: str = _setting(
        "",
        "TOML file of retention rules ([[rule]] tables: keep_years after study_date, "
        "last_study, last_access or stored; optional tenant, modality, sop_class, until_age; "
        "docs/retention.md). Empty: retention.toml in data_dir if present; without rules no "
        "study ever expires.",
    )
    retention_approval: str = _setting(
        "review",
        "'review': scheduled retention jobs (jobs_schedule retention=1d) only list what is "
        "due, and studies are deleted by nubis retention run, whose admin approves; "
        "'automatic': scheduled runs delete too, the rules file being the approval.",
        _choice("review", "automatic"),
    )
    replica_of: str = _setting(
        "",
        "URL of the primary this archive is a read-only replica of: clients read, and every "
        "store, delete, correction and crypto-shred is refused (HTTP 403, DIMSE 0x0124) but "
        "replica_writer's, until `nubis replication promote` (docs/replication.md). Empty: "
        "not a replica.",
    )
    replica_writer: str = _setting(
        "replicator",
        "On a read-only replica (replica_of), the user whose API key the primary replicates "
        "with (an admin here): the one caller allowed to change this archive.",
    )
    forward_to: str = _setting(
        "",
        "An edge node's cloud archive: the DICOMweb root of the nubis that holds the archive "
        "(e.g. https://pacs.example.org/dicom-web). Everything is stored here first and "
        "forwarded there by the replication outbox (it sets replicate_to); studies the cloud "
        "confirmed are evicted by the edge_keep_* rules and read back through from it "
        "(docs/edge.md). Empty: not an edge node.",
    )
    forward_api_key: str = _setting(
        "",
        "API key of the edge's service user at the cloud archive (an admin of its tenant "
        "there): forwards and read-throughs are sent with it. Empty: replicate_api_key.",
    )
    edge_keep_days: int = _setting(
        30,
        "On an edge node, studies changed within this many days stay local; older ones the "
        "cloud confirmed are evicted (their blobs; the index keeps them). 0: no age rule.",
    )
    edge_keep_bytes: str = _setting(
        "0",
        "On an edge node, the most the local copies of studies may take (500GB, 2TiB): above "
        "it the oldest studies the cloud confirmed are evicted first, recent or not. 0: no "
        "size rule.",
    )
    edge_evict_every_seconds: int = _setting(
        600, "How often an edge node queues its eviction job (edge-evict)."
    )
    analyzers: str = _setting(
        "",
        "Analyzers run on new studies, as 'NAME [modality=CT,..] [body_part=..] [sop_class=..] "
        "[min_instances=N] [concurrency=N]; ...', e.g. 'ct-qc' (the built-in CT series QC) or "
        "'ct-qc concurrency=2; acme-lung modality=CT body_part=CHEST'. Conditions narrow what "
        "the analyzer wants; results are stored in the study (docs/analyzers.md). Empty: none.",
    )
    analyzer_stable_seconds: int = _setting(
        300,
        "A study is analyzed once no instance has reached it for this long (it is complete).",
    )
    analyzer_scan_seconds: int = _setting(
        60, "How often an analyze-scan job looks for stable studies to analyze."
    )
    analyzer_lookback_hours: int = _setting(
        72,
        "Only studies changed within this many hours are analyzed on their own; older ones on "
        "request (nubis jobs run analyze --param analyzer=NAME --param study=UID). 0: the "
        "whole archive, newest first.",
    )
    change_feed: bool = _setting(
        True,
        "Keep the change feed (GET /changefeed, docs/events.md): every create, update, delete "
        "and shredding in its own commit, in commit order. Off: no entries, and no webhooks.",
    )
    change_feed_retention_days: int = _setting(
        30,
        "Entries of the change feed older than this many days are removed by the daily "
        "changefeed-expire job; a cursor older than that is answered 410.",
    )
    webhook_every_seconds: int = _setting(
        5,
        "How often a webhooks job is queued when none is running; each one delivers what is "
        "due to every subscription.",
    )
    webhook_wake_ms: int = _setting(
        1000,
        "A store that adds a change-feed entry wakes the webhooks job, at most once per this "
        "many milliseconds (a receiver hears of a new object within about that); 0: no wake, "
        "deliveries every webhook_every_seconds only.",
    )
    webhook_timeout_seconds: int = _setting(
        10, "A webhook receiver must answer within this many seconds, or the attempt failed."
    )
    webhook_batch: int = _setting(
        100,
        "At most this many change-feed entries per webhook request (its body is a JSON array "
        "of them, in feed order): a receiver that fell behind catches up in few requests.",
    )
    webhook_max_attempts: int = _setting(
        8,
        "Attempts at delivering one entry before it goes to the subscription's dead letters "
        "(nubis webhooks deliveries / replay) and the next entry is delivered.",
    )
    webhook_retry_max_seconds: int = _setting(
        300, "Longest wait before a failed delivery is tried again (doubling from 1 s up to this)."
    )
    webhook_key: str = _setting(
        "",
        "AES-256 key file encrypting webhook secrets in the index (created 0600 when missing; "
        "every node needs the same one). Empty: webhook-secrets.key in data_dir.",
    )
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def index_url(self) -> str:
        return self.index or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def blobs_url(self) -> str:
        return self.blobs or (self.data_dir / "blobs").resolve().as_uri()

    @property
    def worker_count(self) -> int:
        return self.workers or min(os.cpu_count() or 1, 8)

    @property
    def dimse_peers_path(self) -> Path:
        return Path(self.dimse_peers) if self.dimse_peers else self.data_dir / "dimse-peers.toml"

    @property
    def retention_rules_path(self) -> Path:
        return (
            Path(self.retention_rules) if self.retention_rules else self.data_dir / "retention.toml"
        )

    @property
    def audit_key_path(self) -> Path:
        return Path(self.audit_key) if self.audit_key else self.data_dir / "audit-signing.key"

    @property
    def webhook_key_path(self) -> Path:
        return Path(self.webhook_key) if self.webhook_key else self.data_dir / "webhook-secrets.key"

    @property
    def audit_source(self) -> str:
        return self.audit_source_id or self.ae_title.strip()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def keyring_url(self) -> str:
        return self.keyring or (self.data_dir / "keyring.jsonl").resolve().as_uri()


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, f.metadata["parse"] or _PARSERS[str(f.type)], f.default, f.metadata["help"])
    for f in fields(Settings)
    if f.name != "sources"
)
SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
