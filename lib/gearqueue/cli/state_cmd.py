"""`gearqueue state migrate --to URL`: move the SQLite job state into PostgreSQL.

Before switching `[state] url` to a shared database, the records of the SQLite store
under `[paths] state_dir` must be there too, or a job that succeeded before the switch
would run again when its message is redelivered after it. Running it again copies
nothing twice: a record the database has already is kept (it is newer).
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import exitcodes
from ..config import load_settings, mask_url
from ..errors import ConfigError
from ..jobtypes import JOB_TYPES
from ..state.migrate import copy_records
from ..state.sqlite import SqliteStore


def register(subparsers: Any) -> None:
    state = subparsers.add_parser("state", help="the job-state store")
    commands = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    migrate = commands.add_parser(
        "migrate", help="copy the SQLite job state under state_dir into PostgreSQL "
        "(idempotent)")
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="postgresql:// URL of the target (what [state] url will be)")
    migrate.add_argument("job_types", metavar="TYPE", nargs="*",
                         help=f"job types to copy (default: all of {', '.join(JOB_TYPES)})")
    migrate.set_defaults(run=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    from ..state.postgres import PostgresStore  # psycopg only for this command

    if not args.to.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--to must be a postgresql:// URL, got {mask_url(args.to)!r}")
    unknown = sorted(set(args.job_types) - set(JOB_TYPES))
    if unknown:
        raise ConfigError(f"unknown job type(s) {', '.join(unknown)} (known: "
                          f"{', '.join(JOB_TYPES)})")
    settings = load_settings(args.config)
    for job_type in args.job_types or JOB_TYPES:
        source = SqliteStore(settings.paths.state_dir, job_type)
        if not source.path.exists():
            print(f"{job_type}: no SQLite state at {source.path}")
            continue
        target = PostgresStore(args.to, job_type)
        try:
            target.check_writable()
            copied, kept = copy_records(source, target)
        finally:
            target.close()
            source.close()
        print(f"{job_type}: {copied} record(s) copied to {mask_url(args.to)}, {kept} kept "
              "(already there)")
    return exitcodes.OK
