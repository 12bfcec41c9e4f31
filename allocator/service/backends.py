"""Picks the log backend at the edge: Kafka when a broker is configured, else the embedded SQLite log."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from book.config import AllocatorConfig, ConfigError
from eventlog.port import EventLog

DEFAULT_EMBEDDED_LOG = "allocator-log.sqlite"


@dataclass(frozen=True)
class LogSettings:
    """Where the log is: a Kafka bootstrap list, or the path of an embedded log file."""

    kafka_bootstrap: str | None
    embedded_path: str

    @classmethod
    def resolve(cls, kafka: str | None, embedded: str | None) -> LogSettings:
        """Flags first: `--kafka` means Kafka, `--log` the embedded log; then KAFKA_BOOTSTRAP_SERVERS."""
        path = embedded or os.environ.get("ALLOCATOR_LOG", DEFAULT_EMBEDDED_LOG)
        if kafka:
            return cls(kafka, path)
        if embedded:
            return cls(None, path)
        return cls(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None, path)

    def describe(self) -> str:
        return f"Kafka at {self.kafka_bootstrap}" if self.kafka_bootstrap else f"embedded log {self.embedded_path}"

    def open(self, group: str | None = None) -> EventLog:
        if self.kafka_bootstrap:
            from eventlog.kafka import KafkaEventLog

            return KafkaEventLog(self.kafka_bootstrap, group)
        from eventlog.embedded import EmbeddedEventLog

        return EmbeddedEventLog(self.embedded_path, group)


def load_config(path: str | None) -> AllocatorConfig:
    """The configuration file (JSON, any subset of the keys), or the defaults; errors name the file and key."""
    if path is None:
        return AllocatorConfig()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a JSON object of configuration keys")
    try:
        return AllocatorConfig.from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
