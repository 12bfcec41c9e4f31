"""The README's shell blocks as the tests read them: which variables a block exports and which commands it runs."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """One line of a block that runs `allocator`: the line as written, and its arguments after `allocator`."""

    line: str
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        """The subcommand (`serve`, `acl apply`, `db upgrade`, ...): the leading arguments that are not options."""
        words: list[str] = []
        for arg in self.argv:
            if arg.startswith("-") or len(words) == 2:
                break
            words.append(arg)
        return " ".join(words[:2] if words[0] in ("acl", "db", "keys") else words[:1])


@dataclass(frozen=True)
class Block:
    exports: tuple[str, ...]  # the variables it tells the user to export, by name
    commands: tuple[Command, ...]


def blocks(text: str | None = None) -> list[str]:
    """Every fenced block of the README, as its text."""
    return _FENCE.findall(README.read_text(encoding="utf-8") if text is None else text)


def parse_block(body: str) -> Block:
    """The exports and `allocator` commands of a shell block (comments and other lines left out)."""
    exports: list[str] = []
    commands: list[Command] = []
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("export "):
            exports.append(line.removeprefix("export ").split("=", 1)[0])
            continue
        words = shlex.split(line, comments=True)
        while words and _ASSIGNMENT.match(words[0]):
            words = words[1:]  # `NAME=value allocator ...`: the environment of one command
        if words and words[0] == "allocator":
            commands.append(Command(line, tuple(words[1:])))
    return Block(tuple(exports), tuple(commands))


def kafka_block() -> Block:
    """The README's walkthrough on Kafka and PostgreSQL: the block that exports KAFKA_BOOTSTRAP_SERVERS."""
    found = [parse_block(b) for b in blocks() if "export KAFKA_BOOTSTRAP_SERVERS=" in b]
    assert len(found) == 1, "the README must hold exactly one block exporting KAFKA_BOOTSTRAP_SERVERS"
    return found[0]


def embedded_block() -> Block:
    """The README's walkthrough on the embedded log: the block whose first command is `allocator init --log`."""
    found = [parse_block(b) for b in blocks() if b.startswith("allocator init    --log")]
    assert len(found) == 1, "the README must hold exactly one block starting with `allocator init    --log`"
    return found[0]
