"""`movierec serve --workers N`: N server processes answering on one listening socket.

Python runs one thread of the server at a time (the GIL): the HTTP work of one process
and its model calls take turns. With N workers, this process binds the address and starts
N `movierec serve` processes that accept connections on the same socket (the kernel hands
each new connection to one of them); each loads and serves the model on its own, polling
the model base as one server does, so for up to one poll after a new version appears
two workers may answer from different versions. A worker that dies after it was up is
started again; one that dies before (it cannot start) stops the server (exit 1). SIGTERM
or SIGINT stops them all (exit 0 when each stopped cleanly). No TensorFlow here: this
process only supervises.
"""

from __future__ import annotations

import logging
import os
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


class Supervisor:
    """Starts `workers` processes of `movierec serve <worker_argv>` on one socket bound to
    (host, port) and keeps them running until SIGTERM / SIGINT."""

    def __init__(self, worker_argv: list[str], workers: int, host: str, port: int,
                 ready_file: str | None = None):
        self.worker_argv, self.workers, self.ready_file = worker_argv, workers, ready_file
        self.sock = listening_socket(host, port)
        self.address = self.sock.getsockname()[:2]
        self._dir = tempfile.mkdtemp(prefix="movierec-serve-")
        self._procs: dict[int, subprocess.Popen] = {}
        self._stopping = False

    def _ready_file(self, i: int) -> str:
        return os.path.join(self._dir, f"worker-{i}")

    def _start(self, i: int):
        ready = self._ready_file(i)
        if os.path.exists(ready):
            os.remove(ready)
        argv = [sys.executable, "-m", "pipeline.cli", "serve", *self.worker_argv,
                "--listen-fd", str(self.sock.fileno()), "--ready-file", ready]
        # libuv (uvloop) accepts every pending connection at once; one at a time, the
        # idle workers share a burst of new connections instead of the first taking all
        env = {**os.environ, "UV_TCP_SINGLE_ACCEPT": "1"}
        self._procs[i] = subprocess.Popen(argv, pass_fds=(self.sock.fileno(),), env=env,
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
        log.info("stopped")
        return 0 if clean else 1
