"""`movierec serve`: TF Serving's REST API for the pushed movierec SavedModels.

Endpoints (MODEL is --model-name, default movierec):
  GET  /v1/models/MODEL                      version status (GetModelStatus)
  GET  /v1/models/MODEL/versions/N           the status of version N
  GET  /v1/models/MODEL[/versions/N]/metadata signatures (GetModelMetadata)
  POST /v1/models/MODEL[/versions/N]:predict  {"signature_name": ..., "instances"|"inputs": ...}

Versions: the newest integer directory under MODEL's base that loads is served (TF
Serving's default "latest" policy). A thread polls the base every --poll-seconds; a new
version directory is loaded once its files have stopped changing for one poll, in the
background, while the current version keeps answering; it replaces the current one only
when it loaded and warmed up. A version that fails to load is reported (log, and state
END with the error in the status endpoint) and the current one stays; it is tried again
when its files change.

Errors are JSON `{"error": "..."}`: 400 for a bad request (bad JSON, unknown signature,
wrong dtype or shape, missing inputs, k > 100, ...), 404 for an unknown model, version or
path, 405 for a wrong method, 413 for a body over 64 MiB, 503 while no version is loaded.
Unexpected failures are logged with their traceback and answered with a JSON 500 (never
the traceback).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import weakref

import tensorflow as tf

from serving import versions, workers
from serving.model import RequestError, ServedModel
from trainer import storage

log = logging.getLogger("movierec.serve")

MAX_BODY = 64 * 1024 * 1024


# ----------------------------------------------------------------------------- versions
class VersionStatus:
    def __init__(self, version: int, state: str, error_code: str = "OK",
                 error_message: str = ""):
        self.version, self.state = version, state
        self.error_code, self.error_message = error_code, error_message
        self.fingerprint = None  # files of a failed version, to retry when they change

    def as_json(self) -> dict:
        return {"version": str(self.version), "state": self.state,
                "status": {"error_code": self.error_code,
                           "error_message": self.error_message}}


def _fingerprint(path: str):
    """(relative name, size, mtime) of every file under a version directory (local or an
    object store's), to tell when a failed version's files change."""
    files = []
    for root, dirs, names in storage.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = storage.join(root, name)
            try:
                st = storage.stat(full)
            except OSError:
                continue
            files.append((full[len(path):].lstrip("/"), st.st_size, st.st_mtime_ns))
    return tuple(files)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, tf.errors.OpError):
        return _OP_ERROR_NAMES.get(exc.error_code, "UNKNOWN")
    if isinstance(exc, FileNotFoundError):
        return "NOT_FOUND"
    return "UNKNOWN"


_OP_ERROR_NAMES = {
    tf.errors.NOT_FOUND: "NOT_FOUND", tf.errors.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    tf.errors.DATA_LOSS: "DATA_LOSS", tf.errors.FAILED_PRECONDITION: "FAILED_PRECONDITION",
    tf.errors.UNIMPLEMENTED: "UNIMPLEMENTED", tf.errors.INTERNAL: "INTERNAL",
    tf.errors.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def _tf_message(exc: "tf.errors.OpError") -> str:
    """The line of a TF op error that says what is wrong (not its graph-position noise)."""
    skip = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ")
    for line in (exc.message or "").splitlines():
        line = line.strip()
        if line and not line.startswith(skip):
            line = line.split("\t [[")[0].split(" [Op:")[0].strip()
            return line.removeprefix("Name: <unknown>, ")[:500]
    return type(exc).__name__


class VersionManager:
    """Which versions exist, which one is served; loads new ones in the background."""

    def __init__(self, name: str, base: str, poll_seconds: float = 2.0, loader=None):
        self.name, self.base, self.poll_seconds = name, base, poll_seconds
        self.current: ServedModel | None = None
        self.statuses: dict[int, VersionStatus] = {}
        self._loader = loader or ServedModel.load
        self._seen: dict[int, tuple] = {}  # version -> fingerprint at the last poll
        self._lock = threading.Lock()  # statuses
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_empty = False

    # what is on disk
    def _versions_on_disk(self) -> dict[int, str]:
        try:
            return versions.on_disk(self.base)
        except OSError as e:
            if not self._warned_empty:
                log.warning("cannot list %s: %s", self.base, e.strerror or e)
                self._warned_empty = True
            return {}

    def _set(self, status: VersionStatus):
        with self._lock:
            self.statuses[status.version] = status

    def _try_load(self, version: int, path: str, fingerprint) -> bool:
        self._set(VersionStatus(version, "LOADING"))
        log.info("loading version %d from %s", version, path)
        started = time.time()
        try:
            model = self._loader(path, version)
        except Exception as e:  # noqa: BLE001 - any load failure keeps the old version
            status = VersionStatus(version, "END", _error_code(e),
                                   f"failed to load version {version}: {_first_line(e)}")
            status.fingerprint = fingerprint
            self._set(status)
            keeping = (f"still serving version {self.current.version}" if self.current
                       else "no version is being served")
            log.error("version %d failed to load (%s): %s", version, keeping,
                      _first_line(e), exc_info=log.isEnabledFor(logging.DEBUG))
            return False
        previous, self.current = self.current, model
        self._set(VersionStatus(version, "AVAILABLE"))
        if previous is not None:
            self._set(VersionStatus(previous.version, "END"))
            log.info("version %d is now served (took %.1f s); version %d unloaded",
                     version, time.time() - started, previous.version)
        else:
            log.info("version %d is now served (took %.1f s)", version, time.time() - started)
        return True

    def poll(self, initial: bool = False):
        """One look at the base directory: loads the newest version that can be loaded
        (when it is not the one served). On the first look versions load at once; later
        a new directory must stay unchanged for one poll (it may still be being copied)."""
        on_disk = self._versions_on_disk()
        if not on_disk and not self._warned_empty:
            log.warning("no versions under %s yet", self.base)
            self._warned_empty = True
        fingerprints = {}
        for version in sorted(on_disk, reverse=True):
            if self.current is not None and version == self.current.version:
                break  # the served one is the newest that works
            fingerprint = _fingerprint(on_disk[version])
            fingerprints[version] = fingerprint
            status = self.statuses.get(version)
            if status is not None and status.fingerprint == fingerprint:
                continue  # failed before, unchanged since: try an older one
            if not initial and self._seen.get(version) != fingerprint:
                break  # new or still changing: look again at the next poll
            if self._try_load(version, on_disk[version], fingerprint):
                break
        self._seen = fingerprints
        if self.current is not None and self.current.version not in on_disk:
            if not getattr(self, "_warned_gone", False):
                log.warning("the served version %d was removed from disk; still serving it "
                            "until another version loads", self.current.version)
                self._warned_gone = True
        else:
            self._warned_gone = False

    def start(self):
        def loop():
            while not self._stop.wait(self.poll_seconds):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001 - the poller must survive anything
                    log.exception("polling %s failed", self.base)

        self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def status_json(self, version: int | None = None) -> dict | None:
        with self._lock:
            statuses = sorted(self.statuses.values(), key=lambda s: -s.version)
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
        if not statuses:
            return None
        return {"model_version_status": [s.as_json() for s in statuses]}


# ----------------------------------------------------------------------------- batching
class Batcher:
    """Runs model calls in a thread pool, at most `max_inflight` at a time; requests that
    arrive while those run wait, and the waiting requests of one signature (and shape) then
    go as one batch.

    A batch may also wait for clients that are about to ask again: a client (ASGI's
    scope["client"], one per connection; None: not tracked) that asked again within
    QUICK seconds of its previous answer is expected to do so again, and the next batch
    waits for the ones answered less than RETURN_WAIT ago, at most RETURN_WAIT after it
    could have started. Without the wait, the batches of a few such clients settle into
    alternating halves (one request, then the others), which on 2 cores cost a fifth more
    CPU per request than the fuller batches and about a tenth more latency
    (docs/benchmarks.md). A client that asks now and then, a new connection and a lone
    client never make a batch wait."""

    RETURN_WAIT = 0.0025
    QUICK = 0.005

    def __init__(self, pool, max_inflight: int, max_rows: int = 256):
        self.pool, self.max_inflight, self.max_rows = pool, max_inflight, max_rows
        self.queue: collections.deque = collections.deque()
        self.inflight = 0
        # client -> (when its last request was answered, whether it is expected back)
        self._answered: dict = {}
        self._waiting_since = None  # when the queue started waiting for returning clients
        self._timer = None

    async def run(self, signature, feeds: dict, client=None) -> dict:
        """The outputs of `signature` on `feeds` (numpy in, numpy out)."""
        future = asyncio.get_running_loop().create_future()
        answered, _ = self._answered.pop(client, (None, False))
        quick = answered is not None and time.monotonic() - answered < self.QUICK
        self.queue.append((signature, signature.batch_key(feeds), feeds, future,
                           (client, quick)))
        self._start()
        return await future

    def _returning(self, now: float) -> int:
        """The clients expected back that were answered less than RETURN_WAIT ago (the
        answers older than QUICK forgotten)."""
        for client in [c for c, (t, _) in self._answered.items() if now - t >= self.QUICK]:
            del self._answered[client]
        return sum(expected and now - t < self.RETURN_WAIT
                   for t, expected in self._answered.values())

    def _wait(self) -> bool:
        """Whether the waiting requests should wait on for returning clients (and a look
        again is scheduled)."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        left = self.RETURN_WAIT - (now - self._waiting_since)
        if left > 0 and self._returning(now) and len(self.queue) < self.max_rows:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(left, self._look_again)
            return True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting_since = None
        return False

    def _look_again(self):
        self._timer = None
        self._start()

    def _start(self):
        loop = asyncio.get_running_loop()
        while self.queue and self.inflight < self.max_inflight:
            if self._wait():
                return
            signature, key, feeds, future, asker = self.queue.popleft()
            batch = [(feeds, future, asker)]
            if key is not None and self.queue:
                rows = len(next(iter(feeds.values())))
                rest = collections.deque()
                while self.queue:
                    item = self.queue.popleft()
                    size = len(next(iter(item[2].values())))
                    if item[1] == key and rows + size <= self.max_rows:
                        batch.append((item[2], item[3], item[4]))
                        rows += size
                    else:
                        rest.append(item)
                self.queue = rest
            self.inflight += 1
            task = loop.run_in_executor(self.pool, signature.call_batch,
                                        [f for f, _, _ in batch])
            task.add_done_callback(functools.partial(self._done, batch))

    def _done(self, batch, task):
        self.inflight -= 1
        try:
            results = task.result()
        except BaseException as e:  # noqa: BLE001 - e.g. the pool shut down
            results = [e] * len(batch)
        now = time.monotonic()
        for (_, future, (client, quick)), result in zip(batch, results):
            if client is not None:
                self._answered[client] = (now, quick)
            if future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._start()


# ----------------------------------------------------------------------------- the app
class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?:(?P<meta>/metadata)|:(?P<verb>[A-Za-z]+))?/?$")


def _json(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def _read_body(receive, headers: dict) -> bytes:
    """The request body from ASGI `receive`, at most MAX_BODY bytes (413 past it)."""
    length = headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise HTTPError(413, f"request body over {MAX_BODY} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


_JSON_HEADERS = [(b"content-type", b"application/json")]


def create_app(manager: VersionManager, threads: int = 1):
    """The ASGI app answering TF Serving's REST API for `manager`'s model: a plain ASGI
    function (a framework's routing and request objects cost a twentieth of a request's
    CPU, docs/benchmarks.md, for one family of paths that _PATH parses anyway)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads,
                                                 thread_name_prefix="predict")
    batchers = weakref.WeakKeyDictionary()  # ServedModel -> Batcher

    def served(version: str | None) -> ServedModel:
        model = manager.current
        if version is not None:
            if not version.isdigit():
                raise HTTPError(404, f"invalid version {version!r}")
            if model is None or model.version != int(version):
                raise HTTPError(404, f"Servable not found for request: "
                                     f"Specific({manager.name}, {version})")
        if model is None:
            raise HTTPError(503, f"no version of {manager.name} is loaded yet")
        return model

    async def predict(body: bytes, version, client) -> dict:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, ValueError) as e:
            raise RequestError(f"invalid JSON: {e}") from None
        except RecursionError:
            raise RequestError("invalid JSON: nested too deeply") from None
        if not isinstance(payload, dict):
            raise RequestError("the request body must be a JSON object")
        model = served(version)
        name = payload.get("signature_name", "serving_default")
        if not isinstance(name, str):
            raise RequestError("'signature_name' must be a string")
        signature = model.signatures.get(name)
        if signature is None:
            raise RequestError(f"unknown signature {name!r} (signatures: "
                               f"{', '.join(sorted(model.signatures))})")
        feeds, row_format = signature.feeds(payload, model.catalog)
        batcher = batchers.get(model)
        if batcher is None:
            batcher = batchers[model] = Batcher(pool, threads)
        try:
            outputs = await batcher.run(signature, feeds, client)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError,
                tf.errors.FailedPreconditionError) as e:
            raise RequestError(f"the model rejected the input: {_tf_message(e)}") from None
        return signature.response(outputs, row_format)

    async def answer(method: str, path: str, headers: dict, receive, client) -> dict:
        """The JSON answer to one request (HTTPError / RequestError for the others)."""
        match = _PATH.match(path)
        if match is None:
            raise HTTPError(404, f"no such endpoint: {path}")
        name, version = match["name"], match["version"]
        verb, meta = match["verb"], match["meta"]
        if name != manager.name:
            raise HTTPError(404, f"Servable not found for request: Latest({name})")
        if verb is not None:
            if verb != "predict":
                raise HTTPError(404 if verb not in ("classify", "regress") else 400,
                                f"only :predict is supported, not :{verb}")
            if method != "POST":
                raise HTTPError(405, ":predict takes POST")
            return await predict(await _read_body(receive, headers), version, client)
        if method != "GET":
            raise HTTPError(405, f"{path} takes GET")
        if meta:
            return served(version).metadata(manager.name)
        if version is not None and not version.isdigit():
            raise HTTPError(404, f"invalid version {version!r}")
        status = manager.status_json(None if version is None else int(version))
        if status is None:
            what = f"version {version} of " if version else "any version of "
            raise HTTPError(404, f"Could not find {what}model {name}")
        return status

    async def http(scope, receive, send):
        method, path = scope["method"], scope["path"]
        try:
            body, status = _json(await answer(method, path, dict(scope["headers"]),
                                              receive, scope.get("client"))), 200
        except RequestError as e:
            body, status = _json({"error": str(e)}), 400
        except HTTPError as e:
            body, status = _json({"error": str(e)}), e.status
        except _ClientGone:
            return
        except Exception as e:  # noqa: BLE001 - logged with its traceback, answered in JSON
            log.exception("%s %s failed", method, path)
            body, status = _json({"error": f"internal error ({type(e).__name__}); see the "
                                           f"server log"}), 500
        await send({"type": "http.response.start", "status": status,
                    "headers": _JSON_HEADERS + [
                        (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                pool.shutdown(wait=True, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await lifespan(receive, send)

    return app


# ----------------------------------------------------------------------------- running
def serve(model_base: str, host: str = "127.0.0.1", port: int = 8501,
          model_name: str = "movierec", poll_seconds: float = 2.0, threads: int = 1,
          access_log: bool = False, ready_file: str | None = None,
          tf_threads: int = 0, listen_fd: int | None = None,
          loads: tuple[str, int] | None = None) -> int:
    """Runs the server until SIGTERM or SIGINT; returns 0 after a clean shutdown.
    tf_threads: TensorFlow's threads (0: one per core); listen_fd: a listening socket to
    accept on instead of binding host:port, and loads: (the workers' Loads file, this
    worker's index) to take its share of the connections (a worker of
    serving/workers.py)."""
    import uvicorn

    def stop_early(sig, frame):  # before the server runs (e.g. during the first load)
        log.info("%s before the server started: exiting", signal.Signals(sig).name)
        raise SystemExit(0)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop_early)
    base = versions.model_base(storage.absolute(model_base), model_name)
    manager = VersionManager(model_name, base, poll_seconds,
                             loader=functools.partial(ServedModel.load, threads=tf_threads))
    manager.poll(initial=True)
    if manager.current is None:
        log.warning("no loadable version under %s yet; waiting for one", base)
    manager.start()

    if listen_fd is None:  # a worker's supervisor warned
        workers.warn_if_reachable(host)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises a caught SIGTERM after its graceful shutdown, which would
            # end the process with -15; here a signal only asks for the shutdown.
            def handle(sig, frame):
                log.info("%s: shutting down", signal.Signals(sig).name)
                self.handle_exit(sig, frame)

            saved = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in saved.items():
                    signal.signal(s, handler)

        acceptor = None  # a worker's (workers.BalancedAcceptor)

        async def startup(self, sockets=None):
            if loads is None:
                await super().startup(sockets)
                listening = [sock for server in self.servers for sock in server.sockets]
            else:  # a worker: its own accept loop instead of the event loop's
                await super().startup([])
                listening = sockets
                if self.started:
                    protocol = functools.partial(
                        self.config.http_protocol_class, config=self.config,
                        server_state=self.server_state, app_state=self.lifespan.state)
                    self.acceptor = workers.BalancedAcceptor(
                        sockets[0], workers.Loads(loads[0]), loads[1], protocol,
                        self.server_state.connections)
                    self.acceptor.start()
            if self.started and listening:
                address = listening[0].getsockname()
                log.info("serving %s at http://%s:%d/v1/models/%s", model_name,
                         address[0], address[1], model_name)
                if ready_file:
                    with open(ready_file + ".tmp", "w") as f:
                        f.write(f"{address[0]} {address[1]}\n")
                    os.replace(ready_file + ".tmp", ready_file)

        async def on_tick(self, counter):
            if self.acceptor is not None:
                self.acceptor.update()  # closed connections count too
            return await super().on_tick(counter)

        async def shutdown(self, sockets=None):
            if self.acceptor is not None:
                self.acceptor.close()  # stop accepting
            await super().shutdown(sockets)

    config = uvicorn.Config(
        create_app(manager, threads), host=host, port=port, log_level="warning",
        access_log=access_log, lifespan="on", timeout_graceful_shutdown=10,
        proxy_headers=False, ws="none",
        loop=_best("uvloop", "asyncio"), http=_best("httptools", "h11"))
    server = Server(config)
    try:
        server.run(sockets=None if listen_fd is None else [socket.socket(fileno=listen_fd)])
    finally:
        manager.stop()
    if not server.started:
        log.error("could not listen on %s:%d", host, port)
        return 1
    log.info("stopped")
    return 0


def _best(module: str, fallback: str) -> str:
    try:
        __import__(module)
        return module
    except ImportError:
        return fallback
