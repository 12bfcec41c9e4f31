"""Create a SCRAM-SHA-512 user on the secured test broker (or give it a new password) and write its login.

    infra/services.sh user NAME                  what `make`-level users run; it calls this
    .venv/bin/python infra/kafka_user.py NAME [--out FILE]

Logs in as the admin (KAFKA_BOOTSTRAP_SERVERS and KAFKA_CONFIG_FILE, as `infra/services.sh env` prints
them), generates a random password, sets it through the AdminClient (alter_user_scram_credentials), and
writes the user's librdkafka client properties to FILE (default: users/NAME.properties beside the admin's
file) with mode 600. Prints only that path, never the password. The new user has no ACLs: it can log in
and nothing else until ACLs grant it something (the broker denies whatever no ACL allows).

Exit status: 0 done, 1 the broker refused or did not answer, 2 bad arguments or environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Run as a script from infra/: the project's modules are one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eventlog.kafka_properties import (
    CONFIG_FILE_ENV,
    KafkaPropertiesError,
    load_client_properties,
    write_client_properties,
)
from eventlog.kafka_scram import ScramError, new_password, set_scram_password, user_client_properties


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("name", help="the user (principal User:NAME), e.g. agent, executor, operator")
    parser.add_argument("--out", type=Path, help="where to write its client properties (mode 600)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker (default 30)")
    args = parser.parse_args(argv)

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    admin_file = os.environ.get(CONFIG_FILE_ENV, "")
    if not bootstrap or not admin_file:
        print(
            f'kafka_user: KAFKA_BOOTSTRAP_SERVERS and {CONFIG_FILE_ENV} must be set: eval "$(infra/services.sh env)"',
            file=sys.stderr,
        )
        return 2
    try:
        admin = load_client_properties(admin_file)
    except KafkaPropertiesError as exc:
        print(f"kafka_user: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out or Path(admin_file).parent / "users" / f"{args.name}.properties"
    password = new_password()
    try:
        set_scram_password(bootstrap, admin, args.name, password, timeout_s=args.timeout)
    except ValueError as exc:
        print(f"kafka_user: {exc}", file=sys.stderr)
        return 2
    except ScramError as exc:
        print(f"kafka_user: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_client_properties(out, user_client_properties(admin, args.name, password))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
