"""Text from the log or a user, made safe to print to a terminal."""

from __future__ import annotations

import re

# Control characters (C0, DEL, C1): text from the log or a user printed to a terminal as it is could move the cursor
# and erase lines (an outside probe hid a kill-switch trip under `allocator tail governor` with an operator id holding
# ESC [2A ESC [2K). Line breaks and tabs go too, unless kept: a record's text is one line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` safe to print to a terminal: each control character a `?` (with `keep_newlines`, line breaks and tabs
    stay: a service's own multi-line message)."""
    return (_CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL).sub("?", text)
