"""Load the TOML configuration and `-o section.key=value` overrides, once, into frozen objects.

Every key has a name, a type, a default and bounds, checked here at start-up (as Postfix does);
any problem is a ConfigError naming the key. No other module reads the file or the environment.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from gateway import config_values as check
from gateway.presentation import LOCALES
from gateway.units import format_duration

DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
# The templates that ship inside the package (gateway/templates/, package data in the wheel), found
# from the package itself wherever it is installed or started from. A directory on disk: the
# template loaders and the portal's /static/ route read files from it. `gateway.templates_dir`
# replaces it with an administrator's own copy.
BUNDLED_TEMPLATES = Path(__file__).resolve().parent / "templates"
CONFIG_ENV = "PPAP_GATEWAY_CONFIG"

CONVERT_MODES = ("encrypted-zip", "all-attachments", "none")
PASSWORD_CHANNELS = ("none", "recipient-email", "sender-email", "webhook")
NOTIFY_SENDER = ("never", "first-download", "every-download")
PASSWORD_MAIL = ("suppress", "replace", "pass")
ON_SCAN_ERROR = ("tempfail", "allow")
STARTTLS_MODES = ("off", "opportunistic", "required")
DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MIME_LIMIT_ACTIONS = ("reject",)  # "pass" was removed: what is not inspected does not go out
ENCRYPTED_MAIL = ("refuse", "pass")


class ConfigError(Exception):
    """One line: the key and what is wrong with it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Policy:
    convert: str = "encrypted-zip"
    link_lifetime: timedelta = timedelta(days=7)
    max_link_lifetime: timedelta = timedelta(days=30)
    max_downloads: int = 0
    password: str = "none"
    password_length: int = 12
    locale: str = "ja"
    convert_signed: bool = False
    encrypted_mail: str = "refuse"
    password_delay: timedelta = timedelta(minutes=5)
    verify_recipient: bool = False
    sender_receipt: bool = True
    notify_sender: str = "first-download"
    password_mail_window: timedelta = timedelta(minutes=60)
    password_mail: str = "suppress"
    keep_original_zip: bool = False
    on_scan_error: str = "tempfail"


@dataclass(frozen=True)
class Department:
    name: str
    senders: tuple[str, ...]
    policy: Policy


@dataclass(frozen=True)
class GatewaySettings:
    hostname: str = "ppap-gateway.localdomain"
    internal_domains: tuple[str, ...] = ()
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Tokyo"))
    log_format: str = "kv"
    templates_dir: Path = BUNDLED_TEMPLATES
    # Worker processes under `serve` (0: one per core the process may run on).
    workers: int = 0
    # How long a stopping (SIGTERM) or retiring (SIGHUP) worker lets its sessions in DATA and
    # their relays finish before it cancels them (what they stored is rolled back).
    stop_timeout: timedelta = timedelta(seconds=60)
    # This gateway among the nodes sharing a database: its claims (notices, messages being
    # relayed) carry it. Unique per node; default: the host name and a hash of data_dir.
    node_id: str = ""


@dataclass(frozen=True)
class SmtpSettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 10025
    allowed_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    max_line_length: int = 65536
    timeout: timedelta = timedelta(minutes=5)
    # Resource limits (issue 6): sessions, the DATA phase, memory, MIME and header structure.
    max_sessions: int = 200
    max_sessions_per_client: int = 20
    data_timeout: timedelta = timedelta(minutes=10)
    max_data_in_flight: int = 256 * 1024 * 1024
    max_mime_depth: int = 50
    max_mime_parts: int = 1000
    mime_limit_action: str = "reject"
    # Looking into files (archives in archives, attached mail, text-encoded files): bytes
    # unpacked or decoded per message, files nested in files, and time per message.
    max_expanded_size: int = 256 * 1024 * 1024
    max_file_nesting: int = 10
    inspect_timeout: timedelta = timedelta(seconds=60)
    max_header_line: int = 8192
    max_header_fields: int = 1000
    # Each MIME header field (Content-*) of every part: bytes, and ';' in the two fields with
    # parameters (the standard library splits them in time quadratic in the ';').
    max_mime_field: int = 16 * 1024
    max_mime_params: int = 100
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_users_file: Path | None = None
    # After this many failed AUTH attempts from one client within the window, AUTH is locked for it.
    auth_max_failures: int = 5
    auth_failure_window: timedelta = timedelta(minutes=10)
    # Failed AUTH attempts for one account name, from all clients together (known or not).
    auth_max_failures_per_account: int = 10
    auth_account_window: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class NextHopSettings:
    url: str = "outbox:var/outbox"
    starttls: str = "opportunistic"
    timeout: timedelta = timedelta(seconds=60)
    # Postfix's default_destination_concurrency_limit: fewer idle connections than deliveries
    # at once means each surplus delivery connects, says EHLO and QUITs again (bench/pool_cost.py)
    pool_size: int = 20


POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class PostgresUrl:
    """storage.database naming a PostgreSQL server (postgresql://USER:PASS@HOST:PORT/DB?…): the
    URL as written, handed to libpq. Printed and logged without its password."""

    url: str

    def __str__(self) -> str:
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()

    def __repr__(self) -> str:
        return f"PostgresUrl({str(self)!r})"


def database_location(value: Any) -> Path | PostgresUrl:
    """A postgresql:// (or postgres://) URL for the store on PostgreSQL; anything else is the
    path of the SQLite file (the embedded default)."""
    text = check.string(value)
    scheme, colon, _ = text.partition(":")
    if not colon or scheme.lower() not in POSTGRES_SCHEMES:
        return check.file_path(text)
    parts = urlsplit(text)
    query = parse_qs(parts.query)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"not a port number in {PostgresUrl(text)}") from None
    if not parts.path.strip("/") and "dbname" not in query:
        raise ValueError(f"name the database: {scheme}://USER@HOST:PORT/DATABASE")
    return PostgresUrl(scheme.lower() + text[len(scheme):])  # libpq knows the scheme in lower case


_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def node_id(value: Any) -> str:
    """gateway.node_id: 1 to 63 letters, digits, '.', '_' or '-', a letter or digit first."""
    text = check.string(value).strip()
    if not _NODE_ID.fullmatch(text):
        raise ValueError(f"{text!r}: 1 to 63 letters, digits, '.', '_' or '-', starting with a"
                         " letter or digit")
    return text


def default_node_id(data_dir: Path, hostname: str | None = None) -> str:
    """This machine's name and a hash of the data directory: two gateways on one machine, each
    with a data directory of its own, are two nodes."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname or socket.gethostname())
    host = host.lstrip("._-")[:40] or "node"
    digest = hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:8]
    return f"{host}-{digest}"


def _file_paths(value: Any) -> tuple[Path, ...]:
    return tuple(check.file_path(item) for item in check.text_list(value))


@dataclass(frozen=True)
class StorageSettings:
    data_dir: Path = Path("var/data")
    # A file: SQLite (embedded, one node). A PostgresUrl: PostgreSQL (several nodes may share it).
    database: Path | PostgresUrl = Path("var/data/gateway.sqlite3")
    master_key_file: Path = Path("var/data/master.key")
    master_key_env: str = "PPAP_GATEWAY_MASTER_KEY"
    master_key_from_env: str | None = None  # the variable's value, read once by the loader
    # Master keys a rotation retired: still tried to open what they sealed, never to seal
    # (docs/cluster.md, "The master key"). Key files as master_key_file's, and/or the variable
    # named here holding base64 keys separated by commas or white space.
    retired_master_key_files: tuple[Path, ...] = ()
    retired_master_keys_env: str = ""
    retired_master_keys_from_env: str | None = field(default=None, repr=False)  # its value
    chunk_size: int = 64 * 1024
    # Where the sealed files lie: "directory" (blobs_dir: local, or a file system every node
    # mounts) or "database" (rows in the PostgreSQL database: nodes then share nothing else).
    blobs: str = "directory"
    blobs_dir: Path = Path("var/data/blobs")

    @property
    def shared(self) -> bool:
        """Whether other nodes may write to the same store (PostgreSQL: a cluster)."""
        return isinstance(self.database, PostgresUrl)


BLOB_BACKENDS = ("directory", "database")


@dataclass(frozen=True)
class PortalSettings:
    public_url: str = "http://localhost:8080"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    # Reverse proxies whose X-Forwarded-For we believe (the client IP in audit events).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    password_max_attempts: int = 5
    password_lockout: timedelta = timedelta(minutes=15)
    session_lifetime: timedelta = timedelta(minutes=30)
    otp_lifetime: timedelta = timedelta(minutes=10)
    otp_max_attempts: int = 5
    otp_resend_interval: timedelta = timedelta(seconds=60)
    otp_per_client_per_hour: int = 20
    # A link's budget: codes sent and wrong codes typed (over all its codes, from any network)
    # before it is locked for codes until the sender unlocks it; a verified code renews it.
    otp_max_sends_per_link: int = 10
    otp_max_failures_per_link: int = 20
    # Link tokens one client network may try that lead nowhere, per 10 minutes (guessing).
    max_unknown_tokens: int = 50


@dataclass(frozen=True)
class NotifySettings:
    """Mail the gateway itself originates (passwords, receipts, codes) and how it retries."""

    from_address: str = ""  # default: ppap-gateway@ the first internal domain
    retry_initial: timedelta = timedelta(minutes=1)
    retry_max: timedelta = timedelta(hours=1)
    max_age: timedelta = timedelta(days=2)
    poll_interval: timedelta = timedelta(seconds=5)
    # How long a claim keeps the other nodes off an item: longer than one send can take, so
    # that only a dead node's item is claimed again (and sent by another node).
    claim_lease: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class ScanSettings:
    """clamd, when configured: every extracted file and every stored attachment is scanned."""

    clamd: str = ""  # "unix:/path", "/path" or "host:port"; "" = no scanning
    timeout: timedelta = timedelta(seconds=30)
    max_stream: int = 25 * 1024 * 1024  # clamd's StreamMaxLength (Debian's default: 25M)
    admin_address: str = ""  # also told when a transfer is blocked


@dataclass(frozen=True)
class UnlockSettings:
    """Limits for opening an encrypted ZIP once its password is known (zip bombs and worse)."""

    max_members: int = 1000
    max_total_size: int = 1024 * 1024 * 1024
    max_ratio: int = 200
    max_depth: int = 2


@dataclass(frozen=True)
class WebhookSettings:
    url: str = ""
    secret_file: Path | None = None
    secret: bytes = b""  # read once by the loader from secret_file
    timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class AdminSettings:
    """The operations listener (/healthz, /metrics): loopback only unless told otherwise."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 9100


@dataclass(frozen=True)
class HousekeepingSettings:
    purge_interval: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class RetentionSettings:
    """How long the purge keeps records that would otherwise grow with every message."""

    # Which recipients of a message were served: a client's retry must still find them.
    deliveries: timedelta = timedelta(days=7)
    # Outbox items sent, given up or cancelled (never one still due or being retried).
    outbox: timedelta = timedelta(days=30)
    # Audit events; also the records of ended transfers (links, controls), counted from expiry.
    audit: timedelta = timedelta(days=400)


@dataclass(frozen=True)
class DkimKeySettings:
    domain: str
    selector: str
    key_file: Path
    algorithm: str = "rsa-sha256"


@dataclass(frozen=True)
class Config:
    gateway: GatewaySettings
    smtp: SmtpSettings
    next_hop: NextHopSettings
    storage: StorageSettings
    portal: PortalSettings
    admin: AdminSettings
    housekeeping: HousekeepingSettings
    retention: RetentionSettings
    notify: NotifySettings
    webhook: WebhookSettings
    scan: ScanSettings
    unlock: UnlockSettings
    dkim_keys: tuple[DkimKeySettings, ...]
    policy: Policy
    departments: tuple[Department, ...]
    source: Path | None = None


# --- the schema: section → key → converter ------------------------------------------------

POLICY_KEYS: dict[str, Callable[[Any], Any]] = {
    "convert": check.choice(CONVERT_MODES),
    "link_lifetime": check.duration,
    "max_link_lifetime": check.duration,
    "max_downloads": check.integer(0, 1_000_000),
    "password": check.choice(PASSWORD_CHANNELS),
    "password_length": check.integer(8, 64),
    "locale": check.choice(LOCALES),
    "convert_signed": check.boolean,
    "encrypted_mail": check.choice(ENCRYPTED_MAIL),
    "password_delay": check.duration,
    "verify_recipient": check.boolean,
    "sender_receipt": check.boolean,
    "notify_sender": check.choice(NOTIFY_SENDER),
    "password_mail_window": check.duration,
    "password_mail": check.choice(PASSWORD_MAIL),
    "keep_original_zip": check.boolean,
    "on_scan_error": check.choice(ON_SCAN_ERROR),
}

SECTION_KEYS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "gateway": {
        "hostname": check.string,
        "internal_domains": check.domains,
        "timezone": check.timezone,
        "log_format": check.choice(("kv", "json")),
        "templates_dir": check.file_path,
        "workers": check.workers,
        "stop_timeout": check.duration,
        "node_id": node_id,
    },
    "smtp": {
        "listen": check.listen,
        "allowed_clients": check.networks,
        "max_message_size": check.size(1024),
        "max_recipients": check.integer(1, 100_000),
        "max_line_length": check.integer(1000, 10_000_000),
        "timeout": check.duration,
        "max_sessions": check.integer(1, 100_000),
        "max_sessions_per_client": check.integer(1, 100_000),
        "data_timeout": check.duration,
        "max_data_in_flight": check.size(1024 * 1024),
        "max_mime_depth": check.integer(1, 1000),
        "max_mime_parts": check.integer(1, 1_000_000),
        "mime_limit_action": check.choice(MIME_LIMIT_ACTIONS),
        "max_expanded_size": check.size(1024 * 1024),
        "max_file_nesting": check.integer(1, 100),
        "inspect_timeout": check.duration,
        "max_header_line": check.integer(998, 10_000_000),
        "max_header_fields": check.integer(10, 1_000_000),
        "max_mime_field": check.integer(1024, 64 * 1024),
        "max_mime_params": check.integer(10, 1000),
        "tls_cert": check.optional_existing_file,
        "tls_key": check.optional_existing_file,
        "auth_users_file": check.optional_existing_file,
        "auth_max_failures": check.integer(1, 1000),
        "auth_failure_window": check.duration,
        "auth_max_failures_per_account": check.integer(1, 10_000),
        "auth_account_window": check.duration,
    },
    "next_hop": {
        "url": check.next_hop_url,
        "starttls": check.choice(STARTTLS_MODES),
        "timeout": check.duration,
        "pool_size": check.integer(1, 256),
    },
    "storage": {
        "data_dir": check.file_path,
        "database": database_location,
        "master_key_file": check.file_path,
        "master_key_env": check.string,
        "retired_master_key_files": _file_paths,
        "retired_master_keys_env": check.string,
        "chunk_size": check.size(4096),
        "blobs": check.choice(BLOB_BACKENDS),
        "blobs_dir": check.file_path,
    },
    "portal": {
        "public_url": check.public_url,
        "listen": check.listen,
        "trusted_proxies": check.networks,
        "password_max_attempts": check.integer(1, 1000),
        "password_lockout": check.duration,
        "session_lifetime": check.duration,
        "otp_lifetime": check.duration,
        "otp_max_attempts": check.integer(1, 100),
        "otp_resend_interval": check.duration,
        "otp_per_client_per_hour": check.integer(1, 100_000),
        "otp_max_sends_per_link": check.integer(1, 1000),
        "otp_max_failures_per_link": check.integer(1, 10_000),
        "max_unknown_tokens": check.integer(1, 1_000_000),
    },
    "notify": {
        "from_address": check.string,
        "retry_initial": check.duration,
        "retry_max": check.duration,
        "max_age": check.duration,
        "poll_interval": check.duration,
        "claim_lease": check.duration,
    },
    "scan": {"clamd": check.clamd_address, "timeout": check.duration, "max_stream": check.size(1024),
             "admin_address": check.string},
    "unlock": {
        "max_members": check.integer(1, 100_000),
        "max_total_size": check.size(1024),
        "max_ratio": check.integer(2, 100_000),
        "max_depth": check.integer(0, 10),
    },
    "webhook": {
        "url": check.webhook_url,
        "secret_file": check.optional_existing_file,
        "timeout": check.duration,
    },
    "admin": {"listen": check.listen},
    "housekeeping": {"purge_interval": check.duration},
    "retention": {"deliveries": check.duration, "outbox": check.duration, "audit": check.duration},
    "policy": POLICY_KEYS,
}

DKIM_KEY_KEYS: dict[str, Callable[[Any], Any]] = {
    "domain": lambda v: check.string(v).strip().lower().rstrip("."),
    "selector": check.string,
    "key_file": check.optional_existing_file,
    "algorithm": check.choice(DKIM_ALGORITHMS),
}

DEPARTMENT_KEYS = ("name", "senders", "policy")


def _check_table(prefix: str, table: Any, schema: Mapping[str, Callable[[Any], Any]]) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"expected a table, got {table!r}")
    values = {}
    for key, raw in table.items():
        name = f"{prefix}.{key}"
        if key not in schema:
            raise ConfigError(name, "unknown key")
        try:
            values[key] = schema[key](raw)
        except ValueError as error:
            raise ConfigError(name, str(error)) from None
    return values


def _build_policy(prefix: str, values: dict, base: Policy) -> Policy:
    policy = replace(base, **values)
    if policy.link_lifetime > policy.max_link_lifetime:
        raise ConfigError(
            f"{prefix}.link_lifetime",
            f"{values.get('link_lifetime', policy.link_lifetime)} is longer than "
            f"max_link_lifetime {policy.max_link_lifetime}",
        )
    if policy.link_lifetime <= timedelta(0):
        raise ConfigError(f"{prefix}.link_lifetime", "must be longer than zero")
    return policy


def _build_departments(raw: Any, default: Policy) -> tuple[Department, ...]:
    if not isinstance(raw, list):
        raise ConfigError("departments", "expected an array of tables ([[departments]])")
    departments = []
    for index, entry in enumerate(raw):
        prefix = f"departments[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(prefix, "expected a table")
        for key in entry:
            if key not in DEPARTMENT_KEYS:
                raise ConfigError(f"{prefix}.{key}", "unknown key")
        try:
            name = check.string(entry.get("name"))
            senders = tuple(s.strip().lower() for s in check.text_list(entry.get("senders")))
        except ValueError as error:
            raise ConfigError(f"{prefix}.name/senders", str(error)) from None
        if not name or not senders:
            raise ConfigError(prefix, "needs a name and at least one sender matcher")
        policy_values = _check_table(f"{prefix}.policy", entry.get("policy", {}), POLICY_KEYS)
        policy = _build_policy(f"{prefix}.policy", policy_values, default)
        departments.append(Department(name=name, senders=senders, policy=policy))
    return tuple(departments)


def _build_dkim(raw: Any) -> tuple[DkimKeySettings, ...]:
    if not isinstance(raw, dict) or set(raw) - {"keys"}:
        unknown = sorted(set(raw) - {"keys"}) if isinstance(raw, dict) else ["?"]
        raise ConfigError(f"dkim.{unknown[0]}", "unknown key")
    keys = []
    for index, entry in enumerate(raw.get("keys", [])):
        prefix = f"dkim.keys[{index}]"
        values = _check_table(prefix, entry, DKIM_KEY_KEYS)
        for required in ("domain", "selector", "key_file"):
            if not values.get(required):
                raise ConfigError(f"{prefix}.{required}", "is required")
        keys.append(DkimKeySettings(**values))
    return tuple(keys)


# A lease shorter than a send lets another node claim an item while it is being sent.
_MIN_CLAIM_LEASE = timedelta(seconds=1)


def _build_notify(values: dict, gateway: GatewaySettings) -> NotifySettings:
    notify = NotifySettings(**values)
    if not notify.from_address:
        domain = next((d.lstrip("*.") for d in gateway.internal_domains), "localhost")
        notify = replace(notify, from_address=f"ppap-gateway@{domain}")
    if "@" not in notify.from_address or any(c in notify.from_address for c in "\r\n<>\" "):
        raise ConfigError("notify.from_address", f"not a plain address: {notify.from_address!r}")
    if notify.claim_lease < _MIN_CLAIM_LEASE:
        raise ConfigError("notify.claim_lease", f"must be at least 1s, got"
                          f" {notify.claim_lease.total_seconds():g}s: it must outlast a send")
    return notify


def _build_webhook(values: dict) -> WebhookSettings:
    webhook = WebhookSettings(**values)
    if webhook.url and webhook.secret_file is None:
        raise ConfigError("webhook.secret_file", "a webhook needs a secret to sign its calls")
    if webhook.secret_file is not None:
        secret = webhook.secret_file.read_bytes().strip()
        if len(secret) < 16:
            raise ConfigError("webhook.secret_file", "the secret must be at least 16 bytes")
        webhook = replace(webhook, secret=secret)
    return webhook


# Why each retention has a floor of one day, said where the configuration is refused.
_RETENTION_FLOOR_REASON = {
    "deliveries": "a client retries a deferred message for days (Postfix: maximal_queue_lifetime"
                  " = 5d) and its retry must reach only the recipients not yet served",
    "outbox": "a finished notice is what the management page shows the sender",
    "audit": "the audit trail is what `ppap-gateway audit export` reads",
}


def _build_retention(values: dict) -> RetentionSettings:
    retention = RetentionSettings(**values)
    for key, reason in _RETENTION_FLOOR_REASON.items():
        if getattr(retention, key) < timedelta(days=1):
            raise ConfigError(
                f"retention.{key}", f"must be at least 1d, got {format_duration(getattr(retention, key))}: {reason}"
            )
    if retention.outbox < retention.deliveries:
        raise ConfigError(
            "retention.outbox",
            f"must be at least retention.deliveries ({format_duration(retention.deliveries)}):"
            " a retry within that time must still find the notices already sent",
        )
    return retention


def _split_listen(values: dict) -> dict:
    """`listen = "HOST:PORT"` in the file becomes listen_host and listen_port."""
    if "listen" in values:
        values["listen_host"], values["listen_port"] = values.pop("listen")
    return values


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` → (section, key, value). The value is read as TOML when it parses
    as a TOML value (numbers, booleans, arrays, quoted strings), else taken as a bare string."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(name or text, "override must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def build_config(
    document: Mapping[str, Any],
    overrides: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> Config:
    """Validate a parsed TOML document plus overrides into a frozen Config."""
    document = {k: (dict(v) if isinstance(v, dict) else v) for k, v in document.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTION_KEYS:
            raise ConfigError(f"{section}.{key}", "unknown section for -o")
        document.setdefault(section, {})[key] = value
    known = set(SECTION_KEYS) | {"dkim", "departments"}
    for section in document:
        if section not in known:
            raise ConfigError(section, "unknown section")

    values = {s: _check_table(s, document.get(s, {}), keys) for s, keys in SECTION_KEYS.items()}

    gateway = GatewaySettings(**values["gateway"])
    if gateway.stop_timeout <= timedelta(0):
        raise ConfigError("gateway.stop_timeout", "must be longer than zero")
    smtp = SmtpSettings(**_split_listen(values["smtp"]))
    if (smtp.tls_cert is None) != (smtp.tls_key is None):
        raise ConfigError("smtp.tls_key", "tls_cert and tls_key must be set together")
    if smtp.auth_users_file and not smtp.tls_cert:
        raise ConfigError("smtp.auth_users_file", "AUTH needs STARTTLS: set smtp.tls_cert/tls_key")
    if smtp.auth_failure_window <= timedelta(0):
        raise ConfigError("smtp.auth_failure_window", "must be longer than zero")
    if smtp.auth_account_window <= timedelta(0):
        raise ConfigError("smtp.auth_account_window", "must be longer than zero")
    if smtp.data_timeout <= timedelta(0):
        raise ConfigError("smtp.data_timeout", "must be longer than zero")
    if smtp.max_data_in_flight < smtp.max_message_size:
        # else a message of the allowed size could never be taken in: 451 for ever
        raise ConfigError("smtp.max_data_in_flight", "must be at least smtp.max_message_size")

    storage_values = values["storage"]
    data_dir = storage_values.get("data_dir", StorageSettings.data_dir)
    storage_values.setdefault("database", data_dir / "gateway.sqlite3")
    storage_values.setdefault("master_key_file", data_dir / "master.key")
    storage_values.setdefault("blobs_dir", data_dir / "blobs")
    env_name = storage_values.get("master_key_env", StorageSettings.master_key_env)
    environ = os.environ if environ is None else environ
    retired_env = storage_values.get("retired_master_keys_env", "")
    if retired_env and not environ.get(retired_env, "").strip():
        raise ConfigError("storage.retired_master_keys_env", f"${retired_env} is not set: set it,"
                          " or remove this setting once no retired key is needed")
    storage = StorageSettings(**storage_values, master_key_from_env=environ.get(env_name) or None,
                              retired_master_keys_from_env=environ.get(retired_env) or None)
    if not gateway.node_id:
        gateway = replace(gateway, node_id=default_node_id(storage.data_dir))
    if storage.blobs == "database" and not storage.shared:
        raise ConfigError("storage.blobs", '"database" keeps files in PostgreSQL: set '
                          'storage.database = "postgresql://…" too')

    policy = _build_policy("policy", values["policy"], Policy())
    departments = _build_departments(document.get("departments", []), policy)
    webhook = _build_webhook(values["webhook"])
    for index, department in enumerate(departments):
        if department.policy.password == "webhook" and not webhook.url:
            raise ConfigError(f"departments[{index}].policy.password", "webhook needs webhook.url")
    if policy.password == "webhook" and not webhook.url:
        raise ConfigError("policy.password", "webhook needs webhook.url")
    return Config(
        gateway=gateway,
        smtp=smtp,
        next_hop=NextHopSettings(**values["next_hop"]),
        storage=storage,
        portal=PortalSettings(**_split_listen(values["portal"])),
        admin=AdminSettings(**_split_listen(values["admin"])),
        housekeeping=HousekeepingSettings(**values["housekeeping"]),
        retention=_build_retention(values["retention"]),
        notify=_build_notify(values["notify"], gateway),
        webhook=webhook,
        scan=ScanSettings(**values["scan"]),
        unlock=UnlockSettings(**values["unlock"]),
        dkim_keys=_build_dkim(document.get("dkim", {})),
        policy=policy,
        departments=departments,
        source=source,
    )


def department_policy(config: Config, name: str) -> Policy:
    """The policy of a department by name (as a transfer records it); the default if gone."""
    for department in config.departments:
        if department.name == name:
            return department.policy
    return config.policy


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    if cli_path:
        return Path(cli_path)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_config(
    cli_path: str | None = None,
    overrides: tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    environ = os.environ if environ is None else environ
    path = resolve_config_path(cli_path, environ)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(str(path), "configuration file not found") from None
    except OSError as error:
        raise ConfigError(str(path), f"cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"not valid TOML: {error}") from None
    return build_config(document, overrides, environ, source=path)
