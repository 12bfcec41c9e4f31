"""Kafka client properties from a file: the security settings (SASL, TLS) that never go on a command line.

The file is librdkafka-style `key=value` lines (what `infra/services.sh env` names in KAFKA_CONFIG_FILE):

    security.protocol=SASL_SSL
    sasl.mechanism=SCRAM-SHA-512
    sasl.username=admin
    sasl.password=...
    ssl.ca.location=/path/to/ca.pem    (or ca.pem: a relative path is beside this file)

Every confluent-kafka client of the project builds its configuration with `client_config`, so the bootstrap
servers come from the command line or KAFKA_BOOTSTRAP_SERVERS and everything else from this file. Values are
never shown: errors name the file, the line and at most the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

CONFIG_FILE_ENV = "KAFKA_CONFIG_FILE"

# A librdkafka/Java property name: letters, digits, dots, dashes and underscores.
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
# Keys whose values are secrets (or embed one): shown as "***" by `redacted`.
_SECRET_MARKERS = ("password", "secret", "jaas", "token", "key.pem", "ssl_key", "credential")
REDACTED = "***"


_V = TypeVar("_V")


class RedactingDict(dict[str, _V]):
    """A plain dict whose repr hides secret values: what a traceback, a log line or a debugger shows of it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redacted(self)!r})"

    __str__ = __repr__


class KafkaPropertiesError(ValueError):
    """A client properties file that cannot be used; the message names the file and line, never a value."""


def load_client_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `key=value` lines of `path` as a dict. Blank lines and lines starting with `#` or `!` are comments;
    whitespace around keys and values is dropped; a line that is not `key=value`, or a key set twice, is an error.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KafkaPropertiesError(f"{path}: no such Kafka client properties file") from None
    except (OSError, UnicodeDecodeError) as exc:
        # Neither error carries the file's content; the OSError's text is the errno's, the decode error's position.
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text (byte {exc.start})"
        raise KafkaPropertiesError(f"{path}: cannot read the Kafka client properties: {reason}") from None
    properties: dict[str, str] = RedactingDict()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, separator, value = line.partition("=")
        key = key.strip()
        if not separator or not _KEY.fullmatch(key):
            # The line itself is not shown: a stray password on a line of its own must not reach a log.
            raise KafkaPropertiesError(
                f"{path}, line {number}: not a 'key=value' property line (content not shown, it may be secret)"
            )
        if key in properties:
            raise KafkaPropertiesError(f"{path}, line {number}: {key} is set a second time")
        properties[key] = _located(path, key, value.strip())
    return properties


def _located(path: str | os.PathLike[str], key: str, value: str) -> str:
    """A relative file named by a `*.location` key (the CA, a keystore) is the one beside the properties file, so a
    folder holding both can be copied anywhere (out of a container, to another machine) and still work;
    librdkafka's `probe` (the system's CA store) stays as it is."""
    if not key.endswith(".location") or not value or value == "probe" or Path(value).is_absolute():
        return value
    return str(Path(path).resolve().parent / value)


def client_properties_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The properties of the file named by $KAFKA_CONFIG_FILE, or none when it is unset or empty."""
    path = (os.environ if environ is None else environ).get(CONFIG_FILE_ENV, "")
    return load_client_properties(path) if path else RedactingDict()


def client_config(bootstrap_servers: str, properties: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A confluent-kafka configuration: `properties` (None: those of $KAFKA_CONFIG_FILE) and the bootstrap servers,
    which win over a `bootstrap.servers` line of the file."""
    base = client_properties_from_env() if properties is None else properties
    return RedactingDict({**base, "bootstrap.servers": bootstrap_servers})


def is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with every secret value replaced by "***": what may be printed or logged."""
    return {key: REDACTED if is_secret(key) else value for key, value in config.items()}


def write_client_properties(path: str | os.PathLike[str], properties: Mapping[str, str]) -> None:
    """Writes `properties` as `key=value` lines to `path`, readable by its owner only (mode 600)."""
    for key, value in properties.items():
        if not _KEY.fullmatch(key) or "\n" in value or "\r" in value:
            raise KafkaPropertiesError(f"{path}: cannot write property {key!r}: bad key or a line break in its value")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT: force it
        handle.write("".join(f"{key}={value}\n" for key, value in properties.items()))
