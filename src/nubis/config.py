"""Settings' values: where each comes from, and whether they fit together.

A value comes, from lowest to highest precedence, from the declared default (nubis.settings,
where every setting is declared once), the TOML file (``--config`` or ``NUBIS_CONFIG``), the
``NUBIS_<NAME>`` environment variable, and the command line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nubis.logs import redact_url
from nubis.settings import SETTINGS, SETTINGS_BY_NAME, Setting, Settings

__all__ = ["SETTINGS", "SETTINGS_BY_NAME", "Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting and its source."""


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve every setting from default, TOML file, environment and explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}

    if config_file is None and environ.get("NUBIS_CONFIG"):
        config_file = Path(environ["NUBIS_CONFIG"])
    if config_file is not None:
        try:
            table = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {config_file}: {exc}") from None
        for key, raw in table.items():
            setting = SETTINGS_BY_NAME.get(key)
            if setting is None:
                raise SettingsError(f"{config_file}: unknown setting {key!r}")
            values[key] = _coerce(setting, raw, f"{config_file}")
            sources[key] = str(config_file)

    for setting in SETTINGS:
        if setting.env_var in environ:
            values[setting.name] = _coerce(setting, environ[setting.env_var], setting.env_var)
            sources[setting.name] = setting.env_var

    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        setting = SETTINGS_BY_NAME[key]
        values[key] = _coerce(setting, raw, "command line")
        sources[key] = "command line"

    _forward_as_replication(values, sources)
    settings = Settings(**values, sources=sources)
    _validate(settings)
    return settings


def _forward_as_replication(values: dict[str, Any], sources: dict[str, str]) -> None:
    """An edge node's ``forward_to`` is its replication target (docs/edge.md): one outbox,
    one job, one status, and the confirmations eviction waits for are the replication's."""
    forward_to = values["forward_to"]
    if not forward_to:
        return
    if values["replicate_to"] and values["replicate_to"] != forward_to:
        raise SettingsError(
            "forward_to and replicate_to name different archives: an edge node forwards to "
            "one (set forward_to only)"
        )
    values["replicate_to"] = forward_to
    sources["replicate_to"] = f"forward_to ({sources['forward_to']})"
    if values["forward_api_key"]:
        values["replicate_api_key"] = values["forward_api_key"]
        sources["replicate_api_key"] = f"forward_api_key ({sources['forward_api_key']})"


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    if isinstance(raw, str) or setting.parse is Path:
        try:
            return setting.parse(str(raw))
        except ValueError as exc:
            raise SettingsError(f"{setting.name} (from {source}): {exc}") from None
    expected = type(setting.default)
    if not isinstance(raw, expected):
        raise SettingsError(
            f"{setting.name} (from {source}): expected {expected.__name__}, got {raw!r}"
        )
    return raw


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as NUBIS_* variables, so a child process resolves exactly the same ones."""
    return {s.env_var: str(getattr(settings, s.name)) for s in SETTINGS}


def _validate(settings: Settings) -> None:
    if not 0 < settings.http_port < 65536:
        raise SettingsError(f"http_port must be 1-65535, got {settings.http_port}")
    if settings.qido_default_limit < 1 or settings.qido_max_limit < settings.qido_default_limit:
        raise SettingsError("qido_default_limit must be >= 1 and <= qido_max_limit")
    if settings.aggregate_min_cell < 1:
        raise SettingsError(f"aggregate_min_cell must be >= 1, got {settings.aggregate_min_cell}")
    if settings.workers < 0:
        raise SettingsError(f"workers must be >= 0, got {settings.workers}")
    for name in ("dimse_port", "dimse_tls_port"):
        if not 0 <= getattr(settings, name) < 65536:
            raise SettingsError(f"{name} must be 0-65535, got {getattr(settings, name)}")
    if not 0 < len(settings.ae_title.strip()) <= 16 or "\\" in settings.ae_title:
        raise SettingsError(
            f"ae_title must be 1-16 characters without a backslash, got {settings.ae_title!r}"
        )
    if settings.dimse_max_associations < 1:
        raise SettingsError("dimse_max_associations must be >= 1")
    if settings.dimse_response_seconds < 1:
        raise SettingsError("dimse_response_seconds must be >= 1")
    if settings.dimse_commitment_retry_seconds < 1 or settings.dimse_commitment_give_up_seconds < 1:
        raise SettingsError(
            "dimse_commitment_retry_seconds and dimse_commitment_give_up_seconds must be >= 1"
        )
    if settings.audit_checkpoint_records < 0 or settings.audit_checkpoint_seconds < 0:
        raise SettingsError("audit_checkpoint_records and audit_checkpoint_seconds must be >= 0")
    if settings.audit_read_flush_ms < 0 or settings.audit_read_max_pending < 1:
        raise SettingsError("audit_read_flush_ms must be >= 0 and audit_read_max_pending >= 1")
    if settings.audit_syslog and not settings.audit_syslog.startswith(("tls://", "tcp://")):
        raise SettingsError(
            "audit_syslog must be tls://HOST:PORT or tcp://HOST:PORT, "
            f"got {settings.audit_syslog!r}"
        )
    if settings.bulk_threshold < 0:
        raise SettingsError("bulk_threshold must be >= 0")
    if settings.stow_max_bytes < 1 or settings.stow_max_parts < 1:
        raise SettingsError("stow_max_bytes and stow_max_parts must be >= 1")
    _validate_security(settings)
    _validate_storage(settings)
    _validate_web(settings)


def _validate_security(settings: Settings) -> None:
    # Imported here: the policy module needs nothing from config, but keep config importable
    # without the security package's dependencies resolved first.
    from nubis.security.policy import parse_roles

    if settings.admin_token and len(settings.admin_token) < 32:
        raise SettingsError(
            "admin_token must be at least 32 characters (e.g. from `openssl rand -hex 32`); "
            "a short token can be guessed"
        )
    if settings.api_key_days < 0:
        raise SettingsError("api_key_days must be >= 0")
    if settings.tls_key and not settings.tls_cert:
        raise SettingsError("tls_key is set but tls_cert is not")
    if settings.oidc_issuer and not settings.oidc_audience:
        raise SettingsError("oidc_issuer needs oidc_audience (the audience tokens must name)")
    algorithms = [a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()]
    weak = [a for a in algorithms if a.lower() == "none" or a.upper().startswith("HS")]
    if weak or not algorithms:
        raise SettingsError(
            f"oidc_algorithms: refused {', '.join(weak) or 'an empty list'}; use asymmetric "
            "algorithms such as RS256, PS256, ES256, EdDSA"
        )
    from nubis.retention.rules import load_rules

    try:
        load_rules(settings.retention_rules_path)
    except (ValueError, OSError) as exc:
        raise SettingsError(f"retention_rules: {exc}") from None
    try:
        parse_roles(settings.break_glass_roles)
    except ValueError as exc:
        raise SettingsError(f"break_glass_roles: {exc}") from None
    if min(settings.login_max_failures_per_user, settings.login_max_failures_per_address) < 0:
        raise SettingsError("login_max_failures_per_user and _per_address must be >= 0")
    if (
        settings.login_failure_window_seconds < 1
        or settings.login_lockout_seconds < 1
        or settings.login_max_lockout_seconds < settings.login_lockout_seconds
    ):
        raise SettingsError(
            "login_failure_window_seconds and login_lockout_seconds must be >= 1, and "
            "login_max_lockout_seconds >= login_lockout_seconds"
        )
    if settings.session_idle_minutes < 1 or settings.session_max_hours < 1:
        raise SettingsError("session_idle_minutes and session_max_hours must be >= 1")
    if not 1 <= settings.share_default_days <= settings.share_max_days:
        raise SettingsError("share_default_days must be between 1 and share_max_days")
    if settings.http_header_timeout_seconds < 1 or settings.http_body_timeout_seconds < 1:
        raise SettingsError(
            "http_header_timeout_seconds and http_body_timeout_seconds must be >= 1"
        )
    from nubis.web.proxies import parse_trusted_proxies

    try:
        parse_trusted_proxies(settings.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(f"trusted_proxies: {exc}") from None


def _validate_storage(settings: Settings) -> None:
    from nubis.jobs.schedule import parse_schedule
    from nubis.services.disk_floor import parse_floor

    try:
        parse_floor(settings.min_free_disk)
    except ValueError as exc:
        raise SettingsError(f"min_free_disk: {exc}") from None
    from nubis.tiers.rules import parse_prices, parse_rules, parse_tiers

    try:
        tiers = parse_tiers(settings.tiers)
    except ValueError as exc:
        raise SettingsError(f"tiers: {exc}") from None
    in_buckets = [t.name for t in tiers.all if t.bucket]
    if in_buckets and not settings.blobs_url.startswith("s3://"):
        raise SettingsError(
            f"tiers: {', '.join(in_buckets)} name(s) a bucket, which needs an S3 blob store "
            "(blobs = s3://BUCKET/PREFIX?...), not a folder"
        )
    for name, check in (
        ("lifecycle", lambda: parse_rules(settings.lifecycle, tiers)),
        ("storage_prices", lambda: parse_prices(settings.storage_prices, tiers)),
        ("tier_compression", lambda: _check_compression(settings.tier_compression, tiers)),
        ("jobs_schedule", lambda: parse_schedule(settings.jobs_schedule)),
    ):
        try:
            check()
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
    if settings.jobs_lease_seconds < 3 or settings.jobs_poll_seconds < 1:
        raise SettingsError("jobs_lease_seconds must be >= 3 and jobs_poll_seconds >= 1")
    if settings.read_record_seconds < 0:
        raise SettingsError("read_record_seconds must be >= 0")
    if settings.replicate_to and not settings.replicate_to.startswith(("http://", "https://")):
        shown = redact_url(settings.replicate_to)
        raise SettingsError(f"replicate_to must be an http(s):// DICOMweb root, got {shown!r}")
    if settings.replicate_delete_delay_days < 0:
        raise SettingsError("replicate_delete_delay_days must be >= 0")
    if settings.replicate_every_seconds < 1 or settings.replicate_retry_max_seconds < 1:
        raise SettingsError("replicate_every_seconds and replicate_retry_max_seconds must be >= 1")
    if settings.analyzers.strip():
        # Only now: the analyzers' contract loads pydicom and numpy.
        from nubis.analyzers.rules import parse_rules as parse_analyzer_rules

        try:
            parse_analyzer_rules(settings.analyzers)
        except ValueError as exc:
            raise SettingsError(f"analyzers: {exc}") from None
    if settings.analyzer_stable_seconds < 0 or settings.analyzer_lookback_hours < 0:
        raise SettingsError("analyzer_stable_seconds and analyzer_lookback_hours must be >= 0")
    if settings.analyzer_scan_seconds < 1:
        raise SettingsError("analyzer_scan_seconds must be >= 1")
    if settings.change_feed_retention_days < 1:
        raise SettingsError("change_feed_retention_days must be >= 1")
    if settings.webhook_wake_ms < 0:
        raise SettingsError("webhook_wake_ms must be >= 0 (0: no wake)")
    if (
        settings.webhook_every_seconds < 1
        or settings.webhook_retry_max_seconds < 1
        or settings.webhook_max_attempts < 1
        or not 1 <= settings.webhook_batch <= 500
        or settings.webhook_timeout_seconds < 1
    ):
        raise SettingsError(
            "webhook_every_seconds, webhook_timeout_seconds, webhook_retry_max_seconds and "
            "webhook_max_attempts must be >= 1, webhook_batch 1 to 500"
        )
    _validate_edge(settings)


def _validate_edge(settings: Settings) -> None:
    from nubis.services.disk_floor import parse_floor

    if settings.forward_to and settings.replica_of:
        raise SettingsError("an edge node (forward_to) cannot also be a replica (replica_of)")
    if settings.edge_keep_days < 0 or settings.edge_evict_every_seconds < 1:
        raise SettingsError("edge_keep_days must be >= 0 and edge_evict_every_seconds >= 1")
    try:
        keep = parse_floor(settings.edge_keep_bytes)
    except ValueError as exc:
        raise SettingsError(f"edge_keep_bytes: {exc}") from None
    if keep.percent:
        raise SettingsError("edge_keep_bytes is a size (500GB, 2TiB), not a share")


def _check_compression(text: str, tiers: Any) -> None:
    from nubis.tiers.rules import parse_compression

    if not text.strip():
        return
    # Only now: the codecs load with pydicom, which settings that compress nothing need not.
    from nubis.dicom.syntaxes import SUPPORTED_TARGETS

    parse_compression(text, tiers, SUPPORTED_TARGETS)


def _validate_web(settings: Settings) -> None:
    from nubis.web.cors import parse_origins
    from nubis.web.urls import parse_public_url

    try:
        parse_origins(settings.cors_origins)
    except ValueError as exc:
        raise SettingsError(f"cors_origins: {exc}") from None
    try:
        parse_public_url(settings.public_url)
    except ValueError as exc:
        raise SettingsError(f"public_url: {exc}") from None
    if settings.oidc_client_id and not settings.oidc_issuer:
        raise SettingsError("oidc_client_id needs oidc_issuer (the provider to sign in with)")


# Settings whose values are secrets: shown as set or not, never echoed.
SECRET_SETTINGS = frozenset(
    {"admin_token", "oidc_client_secret", "replicate_api_key", "forward_api_key"}
)


def displayed_value(name: str, value: object) -> str:
    """How ``nubis settings`` shows a setting's value."""
    if name in SECRET_SETTINGS:
        return "(set)" if value else ""
    text = str(value)
    return redact_url(text) if "://" in text else text
