"""`movierec serve --workers N`: N server processes answering on one listening socket.

Python runs one thread of the server at a time (the GIL): the HTTP work of one process
and its model calls take turns. With N workers, this process binds the address and starts
N `movierec serve` processes that accept connections on the same socket; each loads and
serves the model on its own, polling the model base as one server does, so for up to one
poll after a new version appears two workers may answer from different versions. A
worker that dies after it was up is started again; one that dies before (it cannot
start) stops the server (exit 1). SIGTERM or SIGINT stops them all (exit 0 when each
stopped cleanly). No TensorFlow here: this process only supervises.

Connections are shared out evenly (BalancedAcceptor): a worker takes a new connection only
while no other worker has fewer open. Left to the kernel, whichever worker's loop is free
at that moment takes it, and a few persistent connections split unevenly: in one measured
run, one worker got 6 of a client's 8 and ran with a full queue while the other idled.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("movierec.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def warn_if_reachable(host: str) -> None:
    """The warning for an address other machines can reach."""
    if host not in LOOPBACK:
        log.warning("listening on %s: reachable from other machines (no authentication)",
                    host)


def _die_with_parent():
    """In a worker, before it runs: SIGTERM when this process dies, however it dies (a
    SIGKILLed supervisor leaves no workers holding the port)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the workers outlive a killed supervisor
        pass


def tf_threads(workers: int, requested: int) -> int:
    """TensorFlow's threads per worker: as requested, or (0) the cores shared out, at least
    one each."""
    return requested or max(1, (os.cpu_count() or 1) // workers)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening, inheritable by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


class Loads:
    """Each worker's count of open connections, in a file of one int32 per worker that
    the supervisor creates and every worker maps: a worker writes its own count and reads
    the others'."""

    def __init__(self, path: str):
        with open(path, "r+b") as f:
            self.workers = os.fstat(f.fileno()).st_size // 4
            self._map = mmap.mmap(f.fileno(), 4 * self.workers)
        self._counts = memoryview(self._map).cast("i")

    @staticmethod
    def create(path: str, workers: int) -> None:
        with open(path, "wb") as f:
            f.write(bytes(4 * workers))

    def set(self, worker: int, count: int) -> None:
        self._counts[worker] = count

    def fewest_but(self, worker: int) -> int | None:
        """The fewest open connections of a worker other than `worker` (None: no other)."""
        others = [self._counts[i] for i in range(self.workers) if i != worker]
        return min(others) if others else None


class BalancedAcceptor:
    """A worker's accept loop on the shared listening socket: a pending connection is
    taken only while no other worker has fewer open connections (Loads); otherwise the
    worker looks again after RETRY seconds, and takes it anyway once it has waited
    MAX_WAIT (the worker that should take it is busy for that long, or stuck).
    `connections` is the worker's set of open connections (uvicorn's server state) and
    `protocol_factory` its HTTP protocol."""

    RETRY = 0.002
    MAX_WAIT = 0.05

    def __init__(self, sock: socket.socket, loads: Loads, worker: int, protocol_factory,
                 connections: set):
        self.sock, self.loads, self.worker = sock, loads, worker
        self.protocol_factory, self.connections = protocol_factory, connections
        self._loop = None
        self._timer = None
        self._waiting_since = None  # a pending connection left to another worker

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            if self._timer is not None:
                self._timer.cancel()
            self._loop = None

    def update(self) -> None:
        """Publishes this worker's count of open connections (they also close)."""
        self.loads.set(self.worker, len(self.connections))

    def _readable(self) -> None:
        self.update()
        mine = len(self.connections)
        fewest = self.loads.fewest_but(self.worker)
        if fewest is not None and fewest < mine:
            now = time.monotonic()
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < self.MAX_WAIT:
                self._loop.remove_reader(self.sock.fileno())
                self._timer = self._loop.call_later(self.RETRY, self._look_again)
                return
        self._waiting_since = None
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):  # another worker took it
            return
        except OSError as e:  # e.g. out of file descriptors: the connection waits
            log.warning("accepting a connection failed: %s", e.strerror or e)
            self._loop.remove_reader(self.sock.fileno())
            self._timer = self._loop.call_later(0.1, self._look_again)
            return
        conn.setblocking(False)
        self.loads.set(self.worker, mine + 1)
        self._loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self.protocol_factory, conn)
        except OSError as e:  # the client went away before its connection was set up
            log.info("a new connection failed: %s", e.strerror or e)
            conn.close()

    def _look_again(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        if not select.select([self.sock], [], [], 0)[0]:
            self._waiting_since = None  # taken by another worker meanwhile
        self._loop.add_reader(self.sock.fileno(), self._readable)


class Supervisor:
    """Starts `workers` processes of `movierec serve <worker_argv>` on one socket bound to
    (host, port) and keeps them running until SIGTERM / SIGINT."""

    def __init__(self, worker_argv: list[str], workers: int, host: str, port: int,
                 ready_file: str | None = None):
        self.worker_argv, self.workers, self.ready_file = worker_argv, workers, ready_file
        self.sock = listening_socket(host, port)
        self.address = self.sock.getsockname()[:2]
        self._dir = tempfile.mkdtemp(prefix="movierec-serve-")
        self._loads_file = os.path.join(self._dir, "loads")
        Loads.create(self._loads_file, workers)
        self._loads = Loads(self._loads_file)
        self._procs: dict[int, subprocess.Popen] = {}
        self._stopping = False

    def _ready_file(self, i: int) -> str:
        return os.path.join(self._dir, f"worker-{i}")

    def _start(self, i: int):
        ready = self._ready_file(i)
        if os.path.exists(ready):
            os.remove(ready)
        self._loads.set(i, 0)  # a dead worker's connections closed
        argv = [sys.executable, "-m", "pipeline.cli", "serve", *self.worker_argv,
                "--listen-fd", str(self.sock.fileno()), "--ready-file", ready,
                "--loads-file", self._loads_file, "--worker-index", str(i)]
        self._procs[i] = subprocess.Popen(argv, pass_fds=(self.sock.fileno(),),
                                          preexec_fn=_die_with_parent)

    def _ready(self, i: int) -> bool:
        """Whether worker i listens (its ready file, removed when it is started again)."""
        return os.path.exists(self._ready_file(i))

    def _stop_all(self) -> bool:
        """SIGTERM to every worker, then waits (SIGKILL after 30 s); True when each
        exited 0."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        clean = True
        for proc in self._procs.values():
            try:
                clean &= proc.wait(timeout=30) == 0
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                clean = False
        return clean

    def run(self) -> int:
        def stop(sig, frame):
            log.info("%s: shutting down %d workers", signal.Signals(sig).name, self.workers)
            self._stopping = True

        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, stop)
        for i in range(self.workers):
            self._start(i)
        announced = False
        try:
            while not self._stopping:
                for i, proc in list(self._procs.items()):
                    rc = proc.poll()
                    if rc is None or self._stopping:
                        continue
                    if not self._ready(i):  # it cannot start: neither will another
                        log.error("worker %d (pid %d) exited with %d before it answered: "
                                  "stopping the server", i, proc.pid, rc)
                        self._stop_all()
                        return 1
                    log.error("worker %d (pid %d) exited with %d: starting it again", i,
                              proc.pid, rc)
                    self._start(i)
                if not announced and all(self._ready(i) for i in self._procs):
                    announced = True
                    log.info("%d workers answering at http://%s:%d", self.workers,
                             *self.address)
                    if self.ready_file:
                        with open(self.ready_file + ".tmp", "w") as f:
                            f.write(f"{self.address[0]} {self.address[1]}\n")
                        os.replace(self.ready_file + ".tmp", self.ready_file)
                time.sleep(0.1)
        finally:
            clean = self._stop_all()
            self.sock.close()
            shutil.rmtree(self._dir, ignore_errors=True)
        log.info("stopped")
        return 0 if clean else 1
