"""Several worker processes, each listening on the port with a socket of its own.

uvicorn's own supervisor hands all its workers one listening socket; the kernel then wakes
whichever worker waits in accept(2), and a client's burst of keep-alive connections often
all lands on one worker while another idles. Here every worker binds the port itself with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers by a hash of their
addresses, and a worker that holds more than its share of the busy connections asks some
clients to reconnect (app/api/connection_share.py).

The supervisor (the process ``onnx-serve serve --workers N`` runs as) starts the workers,
keeps the port bound (without listening) so that nothing else takes it while a worker
restarts, starts a new worker when one dies, and passes SIGTERM and SIGINT on to every
worker, whose drain (``app.api.shutdown``) then runs as in a single process; it exits 0 once
they have all finished. Workers run in a process group of their own, so a terminal's Ctrl-C
reaches them once (from the supervisor), and each worker drains and exits if its supervisor
is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from app.api.connection_share import SHARE_ENV, clear_slot, create_table
from app.log import configure_logging
from app.metrics import multiprocess_dir
from app.settings import Settings

log = logging.getLogger(__name__)

#: uvicorn's exit status for a server that could not start (its lifespan startup failed).
STARTUP_FAILURE = 3
FORWARDED = (signal.SIGTERM, signal.SIGINT)
# A worker that dies sooner than this after its start is restarted after a growing pause.
QUICK_DEATH_SECONDS = 10.0
MAX_RESTART_PAUSE = 10.0
# How often a worker checks that its supervisor is still there.
PARENT_CHECK_SECONDS = 1.0


def worker_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``. Once it listens (the server
    starts it after its lifespan's startup: when the worker's models have loaded), the
    kernel adds it to the port's group of listeners (one per worker) and balances
    connections over them; until then it gets none."""
    return _bound(host, port, reuse_port=True)


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` for the workers: fails, as a single server would, when another
    process listens there; resolves port 0 to a free port. The socket never listens, so
    the kernel gives it no connections."""
    # Without SO_REUSEPORT first: binding with it would join another server's listeners.
    probe = _bound(host, port, reuse_port=False)
    port = probe.getsockname()[1]
    probe.close()
    return _bound(host, port, reuse_port=True)


def run_worker(options: dict[str, Any], parent: int, share: str) -> None:
    """The body of one worker process: serve ``options`` (uvicorn.Config's arguments) on a
    listening socket of its own; ``share`` locates its count of connections
    (app/api/connection_share.py)."""
    import uvicorn

    os.environ[SHARE_ENV] = share
    # Its own process group: a signal to the supervisor's group (a terminal's Ctrl-C)
    # reaches the worker only as passed on by the supervisor, so it drains once.
    os.setpgid(0, 0)
    settings = Settings()  # from the environment, as the supervisor's
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn raises the signal that stopped it again once its shutdown (the drain) is done.
    for sig in FORWARDED:
        signal.signal(sig, _exit_cleanly)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    config = uvicorn.Config(**options)
    sock = worker_socket(config.host, config.port)
    with unfinished_steps_left_behind():
        uvicorn.Server(config).run(sockets=[sock])


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    log.warning("the supervisor (pid %d) is gone: draining and stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Slot:
    """One worker's place: its current process and when it may be restarted."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts ``count`` workers serving ``options`` and keeps them running until a signal."""

    def __init__(self, options: dict[str, Any], count: int) -> None:
        self.options = dict(options)
        self.count = count
        self.slots = [_Slot(i) for i in range(count)]
        self.stopping = False
        self.status = 0
        self._context = multiprocessing.get_context("spawn")
        self._table = ""

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT and every worker has drained; the exit status."""
        host, port = self.options.get("host", "127.0.0.1"), int(self.options.get("port", 8000))
        try:
            reserved = reserve_port(host, port)
        except OSError as exc:
            reason = "it is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            log.error("cannot listen on %s:%d: %s", host, port, reason)
            return STARTUP_FAILURE
        self.options["port"] = reserved.getsockname()[1]
        descriptor, self._table = tempfile.mkstemp(prefix="onnx-serve-workers-")
        os.close(descriptor)
        create_table(self._table, self.count)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        try:
            for slot in self.slots:
                self._start(slot)
            log.info(
                "serving http://%s:%d from %d worker processes (pids %s), each listening "
                "with a socket of its own (SO_REUSEPORT)",
                host, self.options["port"], self.count,
                ", ".join(str(s.process.pid) for s in self.slots if s.process),
            )  # fmt: skip
            self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            reserved.close()
            os.unlink(self._table)
        return self.status

    def _start(self, slot: _Slot) -> None:
        process = self._context.Process(
            target=run_worker,
            args=(self.options, os.getpid(), f"{self._table}:{slot.index}:{self.count}"),
            name=f"onnx-serve-worker-{slot.index}",
        )
        process.start()
        slot.process, slot.started, slot.restart_at = process, time.monotonic(), None

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: passing it on to the workers", signal.Signals(sig).name)
        self.stopping = True
        # A second signal is passed on too: the workers then stop without waiting.
        for slot in self.slots:
            if slot.process is not None and slot.process.exitcode is None:
                assert slot.process.pid is not None
                try:
                    os.kill(slot.process.pid, sig)
                except ProcessLookupError:
                    pass

    def _supervise(self) -> None:
        while any(s.process is not None or s.restart_at is not None for s in self.slots):
            waiting = [s.process.sentinel for s in self.slots if s.process is not None]
            due = [s.restart_at for s in self.slots if s.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            wait(waiting, timeout)
            for slot in self.slots:
                if slot.process is not None and slot.process.exitcode is not None:
                    self._ended(slot)
                if slot.restart_at is not None and time.monotonic() >= slot.restart_at:
                    if self.stopping:
                        slot.restart_at = None
                    else:
                        self._start(slot)

    def _ended(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None and process.exitcode is not None
        slot.process = None
        code = process.exitcode
        _forget_metrics_of(process.pid)
        clear_slot(self._table, slot.index)
        if self.stopping:
            if code != 0:
                log.warning("worker %d (pid %s) exited with %s", slot.index, process.pid, code)
                self.status = self.status or 1
            return
        if code == STARTUP_FAILURE:
            # The same settings would fail the same way in every worker: stop, as one would.
            log.error("worker %d could not start; stopping the other workers", slot.index)
            self.status = STARTUP_FAILURE
            self._on_signal(signal.SIGTERM, None)
            return
        lived = time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
        pause = (
            min(MAX_RESTART_PAUSE, 0.5 * 2 ** (slot.quick_deaths - 1)) if slot.quick_deaths else 0
        )
        log.warning(
            "worker %d (pid %s) exited with %s after %.0f s; starting another%s",
            slot.index, process.pid, code, lived, f" in {pause:.1f} s" if pause else "",
        )  # fmt: skip
        slot.restart_at = time.monotonic() + pause


def _forget_metrics_of(pid: int | None) -> None:
    """Drop a dead worker's live gauges from the shared metric files (its counts stay)."""
    directory = multiprocess_dir()
    if directory is None or pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def unfinished_steps_left_behind() -> Iterator[None]:
    """Around a server's run: when it ends (returns, or exits cleanly after a signal) while a
    model step still runs on its thread (building a session cannot be interrupted), exit the
    process at once. Everything else is closed by then, and finalising the interpreter under
    a thread inside onnxruntime would abort it."""
    try:
        yield
    except SystemExit as exc:
        if exc.code in (0, None):
            _exit_if_steps_running()
        raise
    _exit_if_steps_running()


def _exit_if_steps_running() -> None:
    from app.registry.time_limits import steps_running

    running = steps_running()
    if running:
        log.warning("exiting with %d model loads or checks unfinished", running)
        logging.shutdown()
        os._exit(0)


def serve(app: str, *, workers: int = 1, **options: Any) -> int:
    """Serve ``app`` with uvicorn (``options``: uvicorn.Config's arguments): in this process
    for one worker, else from ``workers`` worker processes; the exit status."""
    if workers <= 1:
        import uvicorn

        with unfinished_steps_left_behind():
            uvicorn.run(app, **options)
        return 0
    return Supervisor({"app": app, **options}, workers).run()
