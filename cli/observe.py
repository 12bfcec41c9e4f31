"""What a long-running command shows its operators: the metrics and health endpoints, and its log lines.

`MetricsServer` serves, on one port, `/metrics` (Prometheus text format from one registry), `/healthz` (200
while the process runs) and `/readyz` (200 when the process says it is ready, else 503). `LogLine` writes the
human lines as they are, or one JSON object per line (time, level, book, cycle, event, message, fields) with any
password or secret in them masked.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schemas.text import printable

LOG_FORMATS = ("human", "json")


class MetricsServer:
    """A daemon-thread HTTP server for /metrics, /healthz and /readyz; `port=0` picks a free port."""

    def __init__(
        self, registry: CollectorRegistry, ready: Callable[[], bool], port: int, host: str = "0.0.0.0"
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok = server.is_ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found: /metrics, /healthz, /readyz\n")

            def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds must not flood the process's log

        self.registry = registry
        self._ready = ready
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def is_ready(self) -> bool:
        try:
            return bool(self._ready())
        except Exception:
            return False

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


# userinfo of a URL (scheme://user:secret@host), key=value and "key": "value" pairs whose key says secret.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?P<tail>@)")
_SECRET_PAIR = re.compile(
    r"(?P<head>(?:password|passwd|secret|token|api[_-]?key|private[_-]?key|sasl[._]password)\"?\s*[=:]\s*\"?)"
    r"(?P<secret>[^\s\",;&]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with passwords and secrets masked as ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m['head']}***", text)


class LogLine:
    """Where a command's lines go: human text (stdout, warnings and errors on stderr), or JSON lines for log shippers.

    `book` and `cycle` (a callable read at each line) label every JSON line. `expect(event, fields)` attaches
    structured fields to the next line said (the service's per-cycle summary follows its metrics hook)."""

    def __init__(
        self,
        fmt: str = "human",
        book: str | None = None,
        cycle: Callable[[], int | None] = lambda: None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        if fmt not in LOG_FORMATS:
            raise ValueError(f"--log-format: must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
        self.fmt = fmt
        self.book = book
        self.cycle = cycle
        self.out = out
        self.err = err
        self._next: tuple[str, dict[str, Any]] | None = None

    def expect(self, event: str, fields: Mapping[str, Any]) -> None:
        self._next = (event, dict(fields))

    def __call__(self, line: str) -> None:
        self.info(line)

    def info(self, line: str, event: str | None = None, **fields: Any) -> None:
        level = "warning" if line.startswith(("transaction aborted", "database unavailable")) else "info"
        self.write(level, line, event, fields)

    def error(self, line: str, event: str = "error", **fields: Any) -> None:
        self.write("error", line, event, fields)

    def write(self, level: str, line: str, event: str | None, fields: Mapping[str, Any]) -> None:
        stream = (self.err or sys.stderr) if level in ("error", "warning") else (self.out or sys.stdout)
        if self.fmt == "human":
            print(printable(redact(line), keep_newlines=True), file=stream, flush=True)  # log text: a governor's cause
            return
        merged = dict(fields)
        if self._next is not None and event is None:
            event, extra = self._next
            merged = {**extra, **merged}
            self._next = None
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "book": self.book,
            "cycle": self.cycle(),
            "event": event or "message",
            "message": line,
            "fields": merged,
        }
        print(redact(json.dumps(record, default=str, sort_keys=False)), file=stream, flush=True)
