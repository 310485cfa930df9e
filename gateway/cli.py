"""The ppap-gateway command line: serve, check-config, explain, dkim-keygen, purge, revoke,
transfers, audit export, hash-password, send-sample, migrate-store, rotate-master-key.

Configuration problems exit with status 2 and one line naming the key and the problem.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from importlib import metadata
from pathlib import Path

from gateway.config import Config, ConfigError, StorageSettings, load_config
from gateway.units import format_duration

EXIT_CONFIG = 2
DISTRIBUTION = "ppap-gateway"
# Tests only: names a gateway.crashpoints point at which `serve` kills itself (SIGKILL).
CRASH_AT_VARIABLE = "PPAP_GATEWAY_CRASH_AT"


def _add_config_options(parser: argparse.ArgumentParser, overrides: bool) -> None:
    parser.add_argument(
        "--config", default=argparse.SUPPRESS,
        help="TOML file (else $PPAP_GATEWAY_CONFIG, else config/gateway.toml)",
    )
    if overrides:
        parser.add_argument(
            "-o", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
            help="override one setting, validated like the file (repeatable)",
        )


def installed_version() -> str:
    """The version of the installed distribution, from its metadata (pyproject.toml's)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppap-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the SMTP relay")
    _add_config_options(serve, overrides=True)
    check = commands.add_parser("check-config", help="validate the configuration and exit")
    _add_config_options(check, overrides=True)

    explain = commands.add_parser("explain", help="show department and policy per recipient")
    _add_config_options(explain, overrides=True)
    explain.add_argument("--from", dest="sender", required=True)
    explain.add_argument("--to", dest="recipients", action="append", required=True)

    keygen = commands.add_parser("dkim-keygen", help="write a DKIM key, print its DNS TXT record")
    keygen.add_argument("--domain", required=True)
    keygen.add_argument("--selector", required=True)
    keygen.add_argument("--out", default="var/dkim", help="directory for the private key")
    keygen.add_argument("--algorithm", default="rsa-sha256", choices=("rsa-sha256", "ed25519-sha256"))
    keygen.add_argument("--bits", type=int, default=2048)

    purge = commands.add_parser(
        "purge", help="delete expired transfers' files now, and forget records past [retention]"
    )
    _add_config_options(purge, overrides=True)

    revoke = commands.add_parser("revoke", help="revoke a transfer's links, or one link")
    _add_config_options(revoke, overrides=True)
    revoke.add_argument("id", metavar="TRANSFER_OR_LINK")

    transfers = commands.add_parser("transfers", help="list transfers as a table")
    _add_config_options(transfers, overrides=True)
    transfers.add_argument("--sender")
    transfers.add_argument("--since", default="1970-01-01", help="YYYY-MM-DD[THH:MM]")

    audit = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    export = audit_commands.add_parser("export", help="write events as JSON lines or CSV")
    _add_config_options(export, overrides=True)
    export.add_argument("--since", required=True, help="YYYY-MM-DD[THH:MM]")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")

    migrate = commands.add_parser(
        "migrate-store", help="copy this embedded store (SQLite, blob directory) into PostgreSQL,"
        " and verify it; safe to run again")
    _add_config_options(migrate, overrides=True)
    migrate.add_argument("--to", required=True, metavar="postgresql://USER@HOST/DATABASE")
    migrate.add_argument("--blobs-to", required=True, metavar="DIRECTORY|database",
                         help="the target's files: a directory (shared by the nodes), or"
                         " 'database' for rows of the PostgreSQL database")
    migrate.add_argument("--prune", action="store_true",
                         help="delete rows (and their files) the source no longer has")
    migrate.add_argument("--verify-only", action="store_true",
                         help="compare counts and hashes, copy nothing")

    rotate = commands.add_parser(
        "rotate-master-key", help="move what is stored under the retired master keys to the"
        " current one (while the nodes serve; safe to run again)")
    _add_config_options(rotate, overrides=True)
    rotate.add_argument("--check", action="store_true",
                        help="only report what lies under which key; write nothing")

    commands.add_parser("hash-password", help="hash an SMTP AUTH password for the users file")

    sample = commands.add_parser("send-sample", help="send a sample PPAP mail to a running gateway")
    sample.add_argument("--server", default="127.0.0.1:10025", help="HOST:PORT")
    sample.add_argument("--from", dest="sender", default="somu@city.example.lg.jp")
    sample.add_argument("--to", dest="recipients", action="append")
    return parser


def _config(args) -> Config:
    return load_config(getattr(args, "config", None), tuple(getattr(args, "overrides", ())))


def check_startable(config: Config) -> None:
    """What a gateway needs beyond a valid file: usable keys, readable templates."""
    from gateway.app import load_signer
    from gateway.pipeline.notice import make_template_env

    load_signer(config)  # a key file that is not a usable key is a config error too
    make_template_env(config.gateway.templates_dir).get_template("mail/notice.ja.txt")


def cmd_check_config(args) -> int:
    from gateway.app import unsigned_domains

    config = _config(args)
    check_startable(config)
    print(f"configuration OK: {config.source}")
    print(f"  smtp listen      {config.smtp.listen_host}:{config.smtp.listen_port}")
    print(f"  allowed clients  {', '.join(map(str, config.smtp.allowed_clients))}")
    print(f"  next hop         {config.next_hop.url} (starttls {config.next_hop.starttls})")
    print(f"  data directory   {config.storage.data_dir.resolve()}")
    storage = config.storage
    print(f"  metadata         {storage.database}")  # a URL is printed without its password
    blobs = storage.blobs_dir.resolve() if storage.blobs == "directory" else "in the database"
    print(f"  files            {blobs}")
    print(f"  public url       {config.portal.public_url}")
    print(f"  internal domains {', '.join(config.gateway.internal_domains) or '(none)'}")
    print(f"  departments      {', '.join(d.name for d in config.departments) or '(none)'}")
    for domain in unsigned_domains(config):
        print(f"  warning: no DKIM key for {domain}; its converted mail goes out unsigned")
    return 0


def cmd_explain(args) -> int:
    from gateway.pipeline.policy import department_for, is_internal

    config = _config(args)
    department, policy = department_for(config, args.sender)
    print(f"sender      {args.sender}")
    print(f"department  {department}")
    print(
        f"policy      convert={policy.convert} link_lifetime={format_duration(policy.link_lifetime)}"
        f" (max {format_duration(policy.max_link_lifetime)}) max_downloads={policy.max_downloads}"
        f" password={policy.password} locale={policy.locale} convert_signed={policy.convert_signed}"
    )
    for rcpt in args.recipients:
        internal = is_internal(config, rcpt)
        if internal:
            effect = "passes untouched (internal domain)"
        elif policy.convert == "none":
            effect = "passes untouched (policy convert=none)"
        else:
            what = "encrypted ZIPs" if policy.convert == "encrypted-zip" else "all attachments"
            effect = f"{what} become a personal download link"
        print(f"recipient   {rcpt}  {'internal' if internal else 'external'}  {effect}")
    return 0


def cmd_dkim_keygen(args) -> int:
    from gateway.outbound.dkim_keys import generate_dkim_key

    key = generate_dkim_key(
        args.domain, args.selector, Path(args.out), algorithm=args.algorithm, bits=args.bits
    )
    print(f"; private key written to {key.key_path} (mode 0600)", file=sys.stderr)
    print(key.zone_line)
    return 0


def cmd_hash_password(args) -> int:
    from gateway.store.passwords import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not password:
        print("ppap-gateway: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_purge(args) -> int:
    from gateway.app import load_master_keys, open_store, utc_now
    from gateway.ops.housekeeping import (
        PURGING_ELSEWHERE,
        format_report,
        purge_on_one_node,
    )

    config = _config(args)
    db, blobs = open_store(config, load_master_keys(config))
    try:
        report = purge_on_one_node(db, blobs, utc_now(), retention=config.retention)
    finally:
        db.close()
        blobs.close()
    # Exit 0 when a node's timer is purging: the store is being purged, as asked; a failure
    # status would have cron or systemd report an error that needs no one.
    print(PURGING_ELSEWHERE if report is None else format_report(report))
    return 0


def _open_db(config: Config):
    from gateway.store.db import Database, MetadataError, metadata_exists

    try:
        exists = metadata_exists(config.storage.database)
    except MetadataError as error:  # a PostgreSQL server that cannot be reached
        raise ConfigError("storage.database", str(error)) from None
    if not exists:
        raise ConfigError("storage.database", f"no database at {config.storage.database}")
    return Database(config.storage.database)


def cmd_revoke(args) -> int:
    from gateway.app import utc_now
    from gateway.records import RecordNotFound, revoke

    db = _open_db(_config(args))
    try:
        done = revoke(db, args.id, utc_now())
    except RecordNotFound as error:
        print(f"ppap-gateway: {error}", file=sys.stderr)
        return 1
    finally:
        db.close()
    print(f"revoked {done.links} link(s) of transfer {done.transfer_id};"
          f" {done.cancelled_notices} pending notice(s) cancelled")
    return 0


def cmd_transfers(args) -> int:
    from gateway.records import parse_since, transfers_table

    config = _config(args)
    zone = config.gateway.timezone
    db = _open_db(config)
    try:
        print(transfers_table(db, parse_since(args.since, zone), args.sender, zone))
    finally:
        db.close()
    return 0


def cmd_audit(args) -> int:
    from gateway.records import export_events, parse_since

    config = _config(args)
    db = _open_db(config)
    try:
        since = parse_since(args.since, config.gateway.timezone)
        count = export_events(db.events_since(since), args.format, sys.stdout)
    finally:
        db.close()
    print(f"; {count} event(s)", file=sys.stderr)
    return 0


def cmd_migrate_store(args) -> int:
    """Exit 0 when the target matches the source, 1 when it does not (or the copy failed on the
    way), 2 when the copy is refused before anything is written."""
    from gateway.app import blob_backend
    from gateway.ops.migrate_store import MigrationRefused, migrate_store
    from gateway.store.blob_backends import StorageError
    from gateway.store.copying import CopyError
    from gateway.store.db import MetadataError

    config = _config(args)
    target = _migration_target(config.storage, args.to, args.blobs_to)
    try:
        matches = migrate_store(config.storage, target, blob_backend, prune=args.prune,
                                verify_only=args.verify_only, out=sys.stdout)
    except MigrationRefused as error:
        print(f"ppap-gateway: migrate-store refused: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (CopyError, StorageError, MetadataError, OSError) as error:
        print(f"ppap-gateway: migrate-store failed: {error}; run it again once fixed",
              file=sys.stderr)
        return 1
    return 0 if matches else 1


def _migration_target(source: StorageSettings, to: str, blobs_to: str) -> StorageSettings:
    """The source's storage settings with the target's database and files."""
    from dataclasses import replace

    from gateway.config import PostgresUrl, database_location

    try:
        url = database_location(to)
    except ValueError as error:
        raise ConfigError("--to", str(error)) from None
    if not isinstance(url, PostgresUrl):
        raise ConfigError("--to", "name a PostgreSQL database: postgresql://USER@HOST/DATABASE")
    if blobs_to == "database":
        return replace(source, database=url, blobs="database")
    return replace(source, database=url, blobs="directory", blobs_dir=Path(blobs_to))


def cmd_rotate_master_key(args) -> int:
    """Exit 0 when every row opened (under the current key or a retired one), 1 when a row
    opens under no key given (each is named)."""
    from gateway.app import load_master_keys, utc_now
    from gateway.ops.rotate_keys import format_report, rotate_master_keys

    config = _config(args)
    db = _open_db(config)
    try:
        report = rotate_master_keys(db, load_master_keys(config), utc_now(), check=args.check)
    finally:
        db.close()
    format_report(report, sys.stdout)
    return 1 if report.unopenable else 0


def cmd_send_sample(args) -> int:
    from gateway.sample import send_sample

    recipients = args.recipients or ["tanaka@partner.example.com"]
    reply = send_sample(args.server, args.sender, recipients)
    print(reply)
    return 0 if reply.startswith("250") else 1


def cmd_serve(args) -> int:
    from gateway.allocator import return_large_blocks
    from gateway.crashpoints import arm
    from gateway.log import setup_logging

    config = _config(args)
    setup_logging()
    return_large_blocks()  # memory follows the mails in hand, not the largest one seen
    crash_at = os.environ.get(CRASH_AT_VARIABLE)
    if crash_at:
        arm(crash_at)  # ValueError for an unknown point: refuse to start
        logging.getLogger("gateway").warning(
            "%s=%s: this process will kill itself there (a test hook)", CRASH_AT_VARIABLE,
            crash_at,
        )

    from gateway.supervisor import Supervisor

    read_again = lambda: _config(args)  # noqa: E731
    return Supervisor(config, read_config=read_again, check_config=check_startable).run()


COMMANDS = {
    "serve": cmd_serve,
    "check-config": cmd_check_config,
    "explain": cmd_explain,
    "dkim-keygen": cmd_dkim_keygen,
    "hash-password": cmd_hash_password,
    "purge": cmd_purge,
    "revoke": cmd_revoke,
    "transfers": cmd_transfers,
    "audit": cmd_audit,
    "send-sample": cmd_send_sample,
    "migrate-store": cmd_migrate_store,
    "rotate-master-key": cmd_rotate_master_key,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as error:
        print(f"ppap-gateway: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (ValueError, OSError) as error:
        if args.command in ("check-config", "serve", "explain", "purge", "revoke", "transfers",
                            "audit", "rotate-master-key"):
            print(f"ppap-gateway: cannot start: {' '.join(str(error).split())}", file=sys.stderr)
            return EXIT_CONFIG
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
