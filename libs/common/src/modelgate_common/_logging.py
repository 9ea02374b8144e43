"""JSON-lines logging with the request id of the request being served.

Every record is one JSON object. A service writes its records to stderr (containers:
Docker or Kubernetes collects it) or to its own file (the native stack:
``var/log/<service>.jsonl``), which a thread of each process writes in batches so a
request never waits on the disk. Audit events go to the ``modelgate.audit`` logger
and, when an audit file is configured, to that file at once as well, apart from the
service log.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The audit fields of the request being served, which its one log line carries
# (see ``audit_request``); None outside a request.
request_audit_var: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "request_audit", default=None
)

AUDIT_LOGGER = "modelgate.audit"
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# How many renamed files a service log keeps when it reaches its size cap.
LOG_BACKUPS = 10


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        # An audit event goes to the service log and to the audit file: one formatting for both.
        fields = record.__dict__
        done = fields.get("_mg_line")
        if done is not None and done[0] is self:
            line: str = done[1]
            return line
        # A record written by the log thread carries the request id of its request.
        request_id = fields.get("_mg_request_id")
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "pid": record.process,  # which worker of the service
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get() if request_id is None else request_id,
        }
        for key, value in fields.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str).decode()
        # JSON lets U+0085, U+2028 and U+2029 stand raw in a string, but many line
        # readers (Python's splitlines among them) end a line there: a client's path
        # must not split one record in two. Escaped, the line is the same JSON.
        line = line.translate(_LINE_BREAKS)
        record._mg_line = (self, line)  # a "_" name: never a field of the line itself
        return line


class LogFileHandler(logging.Handler):
    """Hands records to a thread of this process that formats and appends them to
    ``path`` in batches: at most every ``flush_seconds``, and at once on ``flush()``,
    ``close()`` and interpreter exit (``logging.shutdown`` flushes and closes every
    handler), so a line logged just before a graceful stop is still written.

    Every process of a service (gunicorn's master and its workers) appends to the same
    file, one whole batch of lines per ``write``. A file renamed away (logrotate, an
    operator) is noticed at the next batch and the path opened anew. Past ``max_bytes``
    (0: never) the process that notices renames it to ``.1`` (older copies shift up to
    ``.{LOG_BACKUPS}``), holding an exclusive ``flock`` so the processes rotate it once.
    """

    def __init__(self, path: Path, flush_seconds: float = 0.2, max_bytes: int = 0) -> None:
        super().__init__()
        self.path = path
        self.flush_seconds = flush_seconds
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._stopped = False
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # After a fork only the forking thread exists: the child gets an empty queue (the
        # parent writes what it queued), a new lock, and starts its own thread when needed.
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending = False  # the thread was woken for lines it has not taken yet
        self._lines_queued = threading.Event()
        self._stopping = threading.Event()

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:  # type: ignore[override]
        # The queue is thread-safe: no handler lock around emit.
        if not self.filter(record):
            return False
        self.emit(record)
        return record

    def emit(self, record: logging.LogRecord) -> None:
        record._mg_request_id = request_id_var.get()
        self._queue.put(record)
        if not self._pending:
            self._pending = True
            self._lines_queued.set()
        if self._thread is None:
            if self._stopped:
                self.flush()  # logged after logging.shutdown: written at once
            else:
                self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stopped:
                thread = threading.Thread(target=self._run, name="modelgate-log", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._lines_queued.wait()  # sleeps until there is something to write
            self._stopping.wait(self.flush_seconds)  # let a batch gather
            self._lines_queued.clear()
            self._pending = False
            self._write_queued()

    def _write_queued(self) -> None:
        with self._write_lock:
            lines: list[str] = []
            while True:
                try:
                    record = self._queue.get_nowait()
                except queue.Empty:
                    break
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            if lines:
                self._write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))

    def _write(self, data: bytes) -> None:
        try:
            fd = self._open_fd()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.max_bytes and os.fstat(fd).st_size >= self.max_bytes:
                self._rotate(fd)
        except OSError as error:
            # The file cannot be written: the lines go to stderr rather than nowhere.
            self._close_fd()
            sys.stderr.write(f"modelgate: cannot write {self.path}: {error}\n")
            sys.stderr.write(data.decode("utf-8", "replace"))
            sys.stderr.flush()

    def _open_fd(self) -> int:
        fd = self._fd
        if fd is not None:
            if self._is_at_path(fd):
                return fd
            self._close_fd()  # renamed or removed: write to the path anew
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._fd = fd
        return fd

    def _is_at_path(self, fd: int) -> bool:
        """Is the open file ``fd`` still the one at ``path`` (not renamed away or removed)?"""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        return os.path.samestat(now, os.fstat(fd))

    def _rotate(self, fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if not self._is_at_path(fd):
                return  # another process rotated it while this one waited for the lock
            for n in range(LOG_BACKUPS - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def flush(self) -> None:
        """Write every record queued so far, in the calling thread."""
        self._write_queued()

    def close(self) -> None:
        self._stopped = True
        self.flush()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._stopping.set()
            self._lines_queued.set()
            thread.join(timeout=5)
        self._thread = None
        self._close_fd()
        super().close()


_service_handler: logging.Handler | None = None


def configure_logging(
    service: str,
    level: str = "INFO",
    audit_file: Path | None = None,
    *,
    log_file: Path | None = None,
    flush_seconds: float = 0.2,
    max_bytes: int = 0,
) -> None:
    """Send every record, as one JSON line, to ``log_file`` (through a ``LogFileHandler``)
    or, without one, to stderr as it is logged; audit events to ``audit_file`` as well."""
    global _service_handler
    formatter = JsonFormatter(service)
    handler: logging.Handler
    if log_file is not None:
        handler = LogFileHandler(log_file, flush_seconds=flush_seconds, max_bytes=max_bytes)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    if _service_handler is not None:  # configured twice (tests, reloads): release the old one
        _service_handler.close()
    _service_handler = handler
    # No record field needs the thread, process or asyncio task names: skip finding them.
    logging.logThreads = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):  # Python 3.12+
        logging.logAsyncioTasks = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our middleware writes the access log; uvicorn's would be a second, unstructured one.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Audit events are lines of the service log too (the CLI's own audit stays apart).
    logging.getLogger(AUDIT_LOGGER).propagate = True
    configure_audit(formatter, audit_file)


def write_logs_at_once() -> None:
    """The process is stopping: write the lines the service log holds in memory now and
    every later one as it is logged (a ``LogFileHandler`` closed; stderr is unbuffered)."""
    if _service_handler is not None:
        _service_handler.close()


def configure_audit(formatter: logging.Formatter, audit_file: Path | None) -> None:
    """Send audit events to ``audit_file`` (the CLI calls this alone: no service log)."""
    audit = logging.getLogger(AUDIT_LOGGER)
    for old in audit.handlers:  # configured twice (tests, reloads): release the old file
        old.close()
    audit.handlers[:] = []
    audit.setLevel(logging.INFO)
    if audit_file is not None:
        audit_file.parent.mkdir(parents=True, exist_ok=True)
        # Written at once, not batched: the account of a prediction or a sign-in is on
        # disk when its response leaves.
        handler = logging.handlers.WatchedFileHandler(audit_file, encoding="utf-8")
        handler.setFormatter(formatter)
        audit.addHandler(handler)


_audit_log = logging.getLogger(AUDIT_LOGGER)


def audit(event: str, **fields: Any) -> None:
    """Write one audit event. Callers pass identifiers, never secrets or payloads."""
    _audit_log.info(event, extra={"audit": event, **fields})


def audit_request(event: str, **fields: Any) -> None:
    """Audit an event that the request being served is about (a prediction): its one
    log line, written when the response is done, is the audit event, carrying these
    fields with the request's (method, path, status, duration, client). Outside a
    request it is an audit event of its own."""
    pending = request_audit_var.get()
    if pending is None:
        audit(event, **fields)
        return
    pending["audit"] = event
    pending.update(fields)
