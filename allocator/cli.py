"""The `allocator` command line: one console script, one subcommand per job (an adapter at the edge)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.codec import load_schema, schema_fingerprint, schema_path
    from schemas.events import EVENT_TYPES

    print(f"{'record':<18} {'fingerprint (CRC-64-AVRO)':<26} file")
    for event_type in EVENT_TYPES:
        fp = schema_fingerprint(load_schema(event_type)).hex()
        print(f"{event_type.__name__:<18} {fp:<26} {schema_path(event_type).name}")
    return EXIT_OK


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    import os

    from projections.migrate import upgrade

    url = args.database or os.environ.get("DATABASE_URL")
    if not url:
        print("allocator db upgrade: no database: pass --database URL or set DATABASE_URL", file=sys.stderr)
        return EXIT_USAGE
    upgrade(url, schema=args.schema, revision=args.revision)
    print(f"projection schema is at {args.revision}" + (f" in schema {args.schema}" if args.schema else ""))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from allocator.demo import run_demo

    return run_demo(out_dir=args.out, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allocator",
        description="Central capital allocator with non-negotiable risk governors.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="run the main job on the embedded default (no services needed)")
    demo.add_argument("--out", default="demo-report", help="folder for the demo's output (default: demo-report)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated agents (default: 7)")
    demo.set_defaults(handler=_cmd_demo)

    db = sub.add_parser("db", help="manage the projection database")
    db_sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    db_sub.required = True
    up = db_sub.add_parser("upgrade", help="apply the Alembic migrations (default: up to head)")
    up.add_argument("--database", help="SQLAlchemy URL (default: $DATABASE_URL)")
    up.add_argument("--schema", help="PostgreSQL schema to migrate into (default: the search path)")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(handler=_cmd_db_upgrade)

    schemas = sub.add_parser("schemas", help="list the wire contract's records and their fingerprints")
    schemas.set_defaults(handler=_cmd_schemas)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The names of the top-level subcommands, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
