"""What the command line's handlers share: exit codes, usage errors, where the log and the configuration are."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from prometheus_client import CollectorRegistry

    from allocator.service.audit_engines import AuditEngine
    from allocator.service.backends import LogSettings
    from allocator.service.chain import ChainSettings, VerifiedLog
    from book.config import AllocatorConfig
    from cli.observe import LogLine, MetricsServer
    from projections.projector import DecisionChain
    from schemas.codec import EventCodec


EXIT_OK = 0


TOPIC_PREFIX_ENV = "ALLOCATOR_TOPIC_PREFIX"
"""The book's topic prefix when no --topic-prefix is given: one book's commands in one shell need it once."""


DEFAULT_PREFIX = "allocator"
DEFAULT_BOOK = "main"  # serve's --book default, and control's when the log has no decision to name one


EXIT_FAILURE = 1


EXIT_USAGE = 2


class UsageError(Exception):
    """A command that must not run as asked: its message is printed and the exit code is 2, never a traceback."""


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 decision`, `3 decisions`, `2 batches` (`plural` where it is not the noun and an s)."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def _chain_settings(args: argparse.Namespace) -> ChainSettings:
    """serve's key and trusted keys from --signing-key and --trusted-keys (errors name the file)."""
    from allocator.service.chain import ChainSettings, DecisionSigner
    from schemas.signing import SigningKeyError

    signer = DecisionSigner(_signing_key(args.signing_key, args.command)) if args.signing_key else None
    try:
        return ChainSettings(signer, _trusted_keys(args))
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc


def _signing_key(path: str, command: str) -> Ed25519PrivateKey:
    """A private key given on the command line (serve's --signing-key, control's --key): a file that is not one is a
    usage error naming it, and one other users may read is used with a warning (`loose_key_file`)."""
    from allocator.service.keys import load_signing_key, loose_key_file
    from schemas.signing import SigningKeyError

    try:
        key = load_signing_key(path)
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc
    loose = loose_key_file(path)
    if loose is not None:
        print(f"allocator {command}: warning: {loose}", file=sys.stderr)
    return key


def _trusted_keys(args: argparse.Namespace) -> dict[str, Ed25519PublicKey]:
    from allocator.service.keys import load_trusted_keys
    from schemas.signing import SigningKeyError

    trusted: dict[str, Ed25519PublicKey] = {}
    try:
        for place in args.trusted_keys or ():  # repeatable: every one given is trusted (not only the last)
            trusted.update(load_trusted_keys(place))
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc
    return trusted


def _projection_chain(
    args: argparse.Namespace, command: str, codec: EventCodec, say: Callable[[str], None]
) -> tuple[DecisionChain | None, Callable[[str], None] | None]:
    """What `project` and `replay` verify decisions with: with --trusted-keys, the chain (the verifier every reader
    of decisions uses, `ChainVerifier`) on the book's decisions topic; without, nothing, and what says once that a
    signed decision is projected unverified (docs/security.md)."""
    from allocator.service.chain import ChainVerifier
    from eventlog.port import Topics
    from projections.projector import DecisionChain

    if args.trusted_keys is not None:
        return DecisionChain(Topics(args.topic_prefix).decisions, ChainVerifier(_trusted_keys(args), codec).check), None

    def unverified(key_id: str) -> None:
        say(f"allocator {command}: WARNING: the log's decisions are signed (key {key_id}) and are projected "
            "UNVERIFIED (no --trusted-keys): the tables hold every decision as written, and a forged decision "
            "projected before the genuine one of its cycle stands in its place; pass --trusted-keys with the "
            "allocator's public key(s) to project only decisions that verify (docs/security.md)")  # fmt: skip

    return None, unverified


def _say_trust(chain: ChainSettings, config: AllocatorConfig, say: LogLine) -> None:
    """What serve's decisions and commands can be trusted for, said once at start (docs/security.md)."""
    if chain.signer is None:
        say.write("warning", "allocator serve: WARNING: decisions are UNSIGNED (no --signing-key): anyone who can "
                  "write the decisions stream (or the embedded log file) can forge them, and executors cannot tell",
                  "trust", {"decisions_signed": False})  # fmt: skip
    else:
        say.info(f"allocator serve: signing decisions with key {chain.signer.key_id}; trusted keys: "
                 f"{', '.join(sorted(chain.trusted))}", "trust", decisions_signed=True)  # fmt: skip
    if not config.operator_keys:
        say.write("warning", "allocator serve: operator commands are accepted UNSIGNED (operator_keys is empty): "
                  "anyone who can write the control stream can halt, resume or reset the kill switch",
                  "trust", {"commands_signed": False})  # fmt: skip
    else:
        say.info(f"allocator serve: operator commands must be signed by one of {len(config.operator_keys)} "
                 f"operator keys (reset quorum {config.kill_switch_reset_quorum})", "trust",
                 commands_signed=True)  # fmt: skip
    if config.agents == ():
        # An outside probe: `"agents": []` was taken without a word; null is what accepts every agent.
        say.write("warning", "allocator serve: WARNING: agents is an empty list: every proposal will be REJECTED "
                  "UNKNOWN_AGENT until an operator adds one (set-limits --set agent:ID=1); null accepts any agent",
                  "trust", {"agents": 0})  # fmt: skip


def _audit_engine(args: argparse.Namespace) -> AuditEngine:
    """Where the re-solves run: --dask ADDRESS, a process pool of --jobs N, or this process."""
    from allocator.service.audit_engines import DaskEngine, ProcessPoolEngine, SequentialEngine

    if args.dask is not None:
        if args.jobs is not None:
            raise UsageError("--jobs and --dask: choose one (the cluster's workers are its own)")
        try:
            return DaskEngine(args.dask)
        except ImportError as exc:
            raise UsageError(f"--dask needs Dask: pip install 'allocator[audit-cluster]' ({exc})") from exc
        except OSError as exc:
            raise UsageError(f"--dask {args.dask}: cannot reach the scheduler: {exc}") from exc
        except ValueError as exc:  # Dask's parsing of the address: "missing port number", an unknown protocol
            raise UsageError(f"--dask {args.dask}: not a scheduler address ({exc}); e.g. tcp://host:8786") from exc
    if args.jobs is None or args.jobs == 1:
        return SequentialEngine()
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: at least 1")
    return ProcessPoolEngine(args.jobs)


def _projector_setup(args: argparse.Namespace) -> tuple[LogSettings, list[str], EventCodec]:
    from allocator.service.discovery import agent_proposal_topics, existing_topics
    from eventlog.port import Topics
    from schemas.codec import make_codec

    settings = _log_settings(args)
    args.topic_prefix = _topic_prefix(args, settings)
    topics = Topics(args.topic_prefix)
    agents = agent_proposal_topics(settings, topics)  # every agent's own proposals topic, read like the shared one
    return (
        settings,
        existing_topics(settings, [*topics.inputs, *agents, *topics.outputs]),
        make_codec(args.schema_registry),
    )


def _topic_prefix(args: argparse.Namespace, settings: LogSettings) -> str:
    """--topic-prefix, or the only book an embedded log holds; a missing log, prefix or book is a usage error."""
    from allocator.service.discovery import BookNotFound, resolve_prefix

    try:
        return resolve_prefix(settings, args.topic_prefix)
    except BookNotFound as exc:
        raise UsageError(str(exc)) from exc


def _projection_url(url: str, settings: LogSettings) -> str:
    """The projection's database URL, refused when it is the embedded event log itself (a replay would delete it), a
    folder, or an existing file that is no projection (projecting into it would add tables to it)."""
    from pathlib import Path

    from projections.database import not_a_projection, sqlite_file

    target = sqlite_file(url)
    log_file = Path(settings.embedded_path) if settings.kafka_bootstrap is None else None
    if target is not None and log_file is not None and target.resolve() == log_file.resolve():
        raise UsageError(f"the database {url} is the event log {settings.embedded_path} itself; "
                         "name another file for the projection")  # fmt: skip
    if target is not None and target.is_dir():
        raise UsageError(f"the database {url} is a folder; name a file for the projection")
    if target is not None and target.exists():
        why = not_a_projection(target)
        if why is not None:
            raise UsageError(f"the database {url} {why}; name another file for the projection")
    return url


def _kafka_admin(args: argparse.Namespace, command: str) -> tuple[str, dict[str, str]]:
    """The broker and the admin's client properties (--kafka/--kafka-config or the environment); usage error when
    no broker is named."""
    from allocator.service.backends import LogSettings

    settings = LogSettings.resolve(args.kafka, None, args.kafka_config)
    if not settings.kafka_bootstrap:
        raise UsageError(f"{command} needs a Kafka broker: pass --kafka or set KAFKA_BOOTSTRAP_SERVERS")
    return settings.kafka_bootstrap, settings.kafka_client_properties()


def _new_secret(env: str, what: str) -> str:
    """A new password from the environment variable `env`, else asked twice at the terminal; never an argument,
    never printed. Without either, a usage error that says how to give one."""
    import getpass
    import os

    secret = os.environ.get(env, "")
    if not secret:
        if not sys.stdin.isatty():
            raise UsageError(f"no {what}: set {env} or run at a terminal to be asked (stdin is not a terminal)")
        secret = getpass.getpass(f"new {what}: ")
        if getpass.getpass(f"new {what} again: ") != secret:
            raise UsageError(f"the two {what}s differ; nothing changed")
    if not secret or any(c in secret for c in "\n\r"):
        raise UsageError(f"the {what} must be non-empty and on one line; nothing changed")
    return secret


def _read_input(source: str) -> str:
    from allocator.service.wire import MAX_INPUT_BYTES, InputTooLarge, read_bounded

    if source == "-":
        text = sys.stdin.read(MAX_INPUT_BYTES + 1)
        if len(text) > MAX_INPUT_BYTES:
            raise UsageError(f"standard input: larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
        return text
    try:
        return read_bounded(source)
    except InputTooLarge as exc:
        raise UsageError(f"{source}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise UsageError(f"{source}: cannot read it ({exc.strerror or exc})") from exc


def _numeric_warning(command: str) -> None:
    """Say on stderr when this process may decide differently from the project's machines (numerics.mismatch): a
    server whose decisions its auditors may not re-derive exactly, or an auditor who may report mismatches that are
    its own machine's."""
    from allocator.service.numerics import mismatch

    why = mismatch()
    if why is not None:
        print(f'allocator {command}: warning: {why} (docs/audit.md, "Machines")', file=sys.stderr)


def _config_file(args: argparse.Namespace) -> AllocatorConfig | None:
    """The --config file, or None when none was given; a file that is not a valid configuration is a usage error."""
    from allocator.service.backends import load_config
    from book.config import ConfigError

    if args.config is None:
        return None
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def _cross_check(verified: VerifiedLog, config: AllocatorConfig | None, say: bool = True) -> AllocatorConfig | None:
    """The configuration the log's verified decisions record last (None when none records one: a log written before
    wire version 2); a --config file that differs from it is only reported (unless not `say`: a caller that folds
    the log compares the configuration in force instead, SET_LIMITS included): the log's is the one that was used.

    Only decisions that verify count (`verify_log` with the reader's trusted keys), so a forged decision cannot choose
    the configuration. The caller reads and verifies the decisions topic once and hands the result here and to what
    else needs it (the audit's re-runs, status's fold): one read of the topic, one rule for every reader."""
    from allocator.service.sequencer import recorded_config

    on_log = recorded_config(verified.accepted)
    if say and on_log is not None and config is not None and on_log.config_hash != config.config_hash:
        print(f"the log ran with hash {on_log.config_hash[:12]} (as its decisions last recorded it; SET_LIMITS since "
              f"then not counted), your file has {config.config_hash[:12]}; the log's configuration is used",
              file=sys.stderr)  # fmt: skip
    return on_log


@dataclass
class StatusConfig:
    """The configuration `allocator status` shows caps against, where it came from, and what the reader made of the
    decisions on the log (None when no log was read: the projection alone)."""

    config: AllocatorConfig
    source: str  # "log" (its verified decisions), "file" (--config) or "defaults"
    note: str | None  # why not the log's, when it is not
    verified: VerifiedLog | None
    trusted: Mapping[str, Ed25519PublicKey]

    @property
    def warning(self) -> str | None:
        from allocator.service.chain import unverified_chain

        return unverified_chain(self.verified, self.trusted) if self.verified is not None else None

    def configuration_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "note": self.note,
            "config_hash": self.config.config_hash,
            "solver_revision": self.config.solver_revision,
            "solver_work_limit": self.config.solver_work_limit,
        }

    def chain_json(self) -> dict[str, Any]:
        from allocator.service.chain import signing_keys

        v = self.verified
        return {
            "log_read": v is not None,
            "trusted_keys": sorted(self.trusted),
            "signing_keys": signing_keys(v) if v is not None else {},
            "verified_decisions": len(v.accepted) if v is not None else 0,
            "head": v.head if v is not None else None,
            "warning": self.warning,
            "rejections": [r.to_json() for r in v.rejections] if v is not None else [],
        }


def _status_config(args: argparse.Namespace) -> StatusConfig:
    """The configuration in force as the log's fold has it (its SET_LIMITS included), folded from the decisions that
    verify with --trusted-keys only (`_cross_check`, the audit's rule), and what the reader made of the chain. When
    the book is signed and not one decision verifies, nothing is taken from the log. --config only cross-checks the
    log's; without a log (no broker named by flag or environment, the default file absent) the --config file's,
    else the defaults. A broker named only by KAFKA_BOOTSTRAP_SERVERS (no --kafka-config either) that cannot give the
    book's configuration is said on stderr, and the projection is shown against those; a log named by --log, --kafka,
    --kafka-config or --trusted-keys that cannot be read is a usage error."""
    from pathlib import Path

    from allocator.service.chain import unverified_chain, verify_log
    from allocator.service.sequencer import NoConfigOnLog, replay_decisions
    from book.config import AllocatorConfig
    from eventlog.port import LogError, Topics
    from schemas.codec import make_codec

    config = _config_file(args)
    trusted = _trusted_keys(args)
    fallback, source = (config, "file") if config is not None else (AllocatorConfig(), "defaults")
    settings = _log_settings(args)
    # A log named on the command line, or credentials given for one: failing to read it is an error, not a note.
    named = (
        args.log is not None
        or args.kafka is not None
        or args.trusted_keys is not None
        or getattr(args, "kafka_config", None) is not None
    )
    if not named and settings.kafka_bootstrap is None and not Path(settings.embedded_path).is_file():
        # No log named, and no broker or embedded log here: the projection alone.
        return StatusConfig(fallback, source, "no log read (name it with --log or --kafka)", None, trusted)
    args.topic_prefix = _topic_prefix(args, settings)
    codec, topics = make_codec(args.schema_registry), Topics(args.topic_prefix)
    try:
        with settings.open() as reader:
            verified = verify_log(reader, codec, topics, trusted)  # the one read of the decisions topic
            if unverified_chain(verified, trusted) is not None:
                return StatusConfig(fallback, source, "not the log's: none of its signed decisions verifies",
                                    verified, trusted)  # fmt: skip
            on_log = _cross_check(verified, config, say=False)
            try:
                state, _, _ = replay_decisions(reader, codec, topics, config if on_log is None else None,
                                               lambda _s, d: d, verified.accepted)  # fmt: skip
            except NoConfigOnLog:
                return StatusConfig(fallback, source, "the log records none", verified, trusted)
            in_force = state.portfolio.config
            if on_log is not None and config is not None and in_force.config_hash != config.config_hash:
                print(f"the log ran with hash {in_force.config_hash[:12]} (in force now, SET_LIMITS included), "
                      f"your file has {config.config_hash[:12]}; the log's configuration is used",
                      file=sys.stderr)  # fmt: skip
    except LogError as exc:
        if named:
            raise UsageError(f"cannot read the configuration from the log: {exc}") from exc
        note = f"the book's configuration cannot be read from {settings.describe()} ({exc})"
        shown = "--config's" if config is not None else "the defaults'"
        print(f"allocator status: the caps shown are {shown}: {note}", file=sys.stderr)
        return StatusConfig(fallback, source, note, None, trusted)
    if on_log is None:
        return StatusConfig(state.portfolio.config, source, "the log records none", verified, trusted)
    return StatusConfig(state.portfolio.config, "log", None, verified, trusted)


def _log_line(args: argparse.Namespace, book: str | None, cycle: Callable[[], int | None] = lambda: None) -> LogLine:
    from cli.observe import LogLine

    return LogLine(args.log_format, book=book, cycle=cycle)


def _metrics_server(
    args: argparse.Namespace, registry: CollectorRegistry, ready: Callable[[], bool]
) -> MetricsServer | None:
    """The /metrics, /healthz and /readyz server on --metrics-port, or None when the flag is absent."""
    if args.metrics_port is None:
        return None
    from cli.observe import MetricsServer

    try:
        return MetricsServer(registry, ready, args.metrics_port, args.metrics_host).start()
    except OSError as exc:
        raise UsageError(f"--metrics-port {args.metrics_port}: cannot listen on it ({exc.strerror or exc})") from exc


def _log_settings(args: argparse.Namespace) -> LogSettings:
    from pathlib import Path

    from allocator.service.backends import LogSettings

    # Where the path came from, as the user gave it: an empty ALLOCATOR_LOG was "--log .: is a folder", and an empty
    # --log quietly meant the default file (an outside probe).
    source = "--log" if args.log is not None or "ALLOCATOR_LOG" not in os.environ else "ALLOCATOR_LOG"
    if args.log == "":
        raise UsageError("--log is empty: give the event log file's path (without it the default is "
                         "allocator-log.sqlite)")  # fmt: skip
    settings = LogSettings.resolve(args.kafka, args.log, getattr(args, "kafka_config", None))
    if not settings.kafka_bootstrap:
        if args.log is None and os.environ.get("ALLOCATOR_LOG") == "":
            raise UsageError(f"{source} is empty: give the event log file's path (without it the default is "
                             "allocator-log.sqlite)")  # fmt: skip
        # SQLite's own answer for these is "unable to open database file", which names neither the path nor why.
        path = Path(settings.embedded_path)
        if path.is_dir():
            raise UsageError(f"{source} {path}: is a folder, not an event log file")
        if not path.parent.is_dir():
            raise UsageError(f"{source} {path}: the folder {path.parent} does not exist (create it first)")
    return settings


def _existing_log(args: argparse.Namespace) -> LogSettings:
    """The log of a command that neither creates a book nor serves one (tail, propose, fill, control): an embedded
    log file must exist already, for opening one creates an empty file and the command would then fail on it."""
    settings = _log_settings(args)
    from pathlib import Path

    if not settings.kafka_bootstrap and not Path(settings.embedded_path).is_file():
        raise UsageError(
            f"no event log at {settings.embedded_path}: create the book with `allocator init --log "
            f"{settings.embedded_path}`, or pass --log FILE (or --kafka HOST:PORT)"
        )
    return settings
