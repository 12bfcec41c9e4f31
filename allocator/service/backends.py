"""Picks the log backend at the edge: Kafka when a broker is configured, else the embedded SQLite log."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from allocator.service.wire import json_integer, json_object, read_bounded
from book.config import AllocatorConfig, ConfigError
from eventlog.kafka_properties import CONFIG_FILE_ENV, client_config, load_client_properties
from eventlog.port import EventLog

DEFAULT_EMBEDDED_LOG = "allocator-log.sqlite"


@dataclass(frozen=True)
class LogSettings:
    """Where the log is: a Kafka bootstrap list, or the path of an embedded log file. For Kafka, the file of
    client properties (security settings) by its path only: the secrets in it are read when a client is made."""

    kafka_bootstrap: str | None
    embedded_path: str
    kafka_config_file: str | None = None

    @classmethod
    def resolve(cls, kafka: str | None, embedded: str | None, kafka_config: str | None = None) -> LogSettings:
        """Flags first: `--kafka` means Kafka, `--log` the embedded log; then KAFKA_BOOTSTRAP_SERVERS.
        The client properties file: `kafka_config` (a `--kafka-config` flag), else KAFKA_CONFIG_FILE."""
        path = embedded or os.environ.get("ALLOCATOR_LOG", DEFAULT_EMBEDDED_LOG)
        properties = kafka_config or os.environ.get(CONFIG_FILE_ENV) or None
        if kafka:
            return cls(kafka, path, properties)
        if embedded:
            return cls(None, path)
        return cls(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None, path, properties)

    def kafka_client_properties(self) -> dict[str, str]:
        """The client properties file's settings (none without a file)."""
        return load_client_properties(self.kafka_config_file) if self.kafka_config_file else {}

    def kafka_client_config(self) -> dict[str, Any]:
        """The confluent-kafka configuration for this broker: bootstrap servers and the file's properties."""
        if self.kafka_bootstrap is None:
            raise ValueError("no Kafka broker configured")
        return client_config(self.kafka_bootstrap, self.kafka_client_properties())

    def describe(self) -> str:
        if not self.kafka_bootstrap:
            return f"embedded log {self.embedded_path}"
        login = f" (client properties {self.kafka_config_file})" if self.kafka_config_file else ""
        return f"Kafka at {self.kafka_bootstrap}{login}"

    def open(self, group: str | None = None) -> EventLog:
        if self.kafka_bootstrap:
            from eventlog.kafka import KafkaEventLog

            return KafkaEventLog(self.kafka_bootstrap, group, config=self.kafka_client_properties())
        from eventlog.embedded import EmbeddedEventLog

        return EmbeddedEventLog(self.embedded_path, group)


MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""A configuration file larger than this is refused unread (an operator keyring of thousands of keys fits)."""


def load_config(path: str | None) -> AllocatorConfig:
    """The configuration file (JSON, any subset of the keys), or the defaults; errors name the file and key."""
    if path is None:
        return AllocatorConfig()
    try:
        data = json.loads(read_bounded(path, MAX_CONFIG_BYTES), parse_int=json_integer, object_pairs_hook=json_object)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: JSON nested too deeply") from exc
    except ValueError as exc:  # too large, or what `json_integer`, `json_object` refuse
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a JSON object of configuration keys")
    try:
        return AllocatorConfig.from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
