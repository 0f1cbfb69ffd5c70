"""Files wherever they live: a local path, or an object-store URI (gs://, s3://, ...).
A URI's failures raise OSError, as the local path's would.

The product's own file accesses outside a Beam pipeline (the data directory's files, the
input fingerprint, artifacts that `inspect` and `report` read, `serve`'s version polling,
the pushed model) go through this module: a local path through the standard library (no
TensorFlow import), a URI through `tf.io.gfile`. Inside Beam pipelines the components use
Beam's FileSystems, which `beam_args` configures for S3.

`s3://` exists in `tf.io.gfile` only once tensorflow-io is imported (it registers the
scheme); `register` does that the first time an s3:// path is used, in whatever process
uses it. tensorflow-io then aborts the interpreter at exit ("pure virtual method called"),
so a command that may have used it ends with os._exit (pipeline/cli.py's entry does).
S3 is configured as tensorflow-io reads it: S3_ENDPOINT (http://HOST:PORT for a local
server), S3_USE_HTTPS, S3_VERIFY_SSL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import posixpath
from typing import Iterator, Mapping, NamedTuple, Sequence

OBJECT_STORE_SCHEMES = ("gs", "s3")
_registered = False


def is_uri(path) -> bool:
    """Whether `path` is a URI (scheme://...) rather than a local path."""
    return "://" in str(path)


def scheme(path) -> str:
    """The URI's scheme ("gs", "s3", ...), "" for a local path."""
    return str(path).split("://", 1)[0].lower() if is_uri(path) else ""


def register(*paths) -> None:
    """Make tf.io.gfile able to open `paths`: import tensorflow-io (which adds s3:// to
    TensorFlow's file systems) the first time one of them is an s3:// URI."""
    global _registered
    if not _registered and any(scheme(p) == "s3" for p in paths):
        import tensorflow_io  # noqa: F401  (registers s3://)

        _registered = True


def _gfile(path):
    register(path)
    import tensorflow as tf

    return tf.io.gfile


def _on_uri(operation: str, path, *args):
    """tf.io.gfile's `operation` on the URI `path`, with TensorFlow's errors raised as the
    OSError that the same call on a local path raises."""
    gfile = _gfile(path)
    with _os_errors():
        return getattr(gfile, operation)(str(path), *args)


def join(base, *names) -> str:
    """`base`/`names`: os.path.join for a local path, "/"-joined for a URI."""
    return posixpath.join(str(base), *names) if is_uri(base) else os.path.join(base, *names)


def absolute(path) -> str:
    """A local path made absolute (~ expanded); a URI as it is, less a trailing "/"."""
    if is_uri(path):
        return str(path).rstrip("/")
    return os.path.abspath(os.path.expanduser(str(path)))


def exists(path) -> bool:
    return _on_uri("exists", path) if is_uri(path) else os.path.exists(path)


def isdir(path) -> bool:
    return _on_uri("isdir", path) if is_uri(path) else os.path.isdir(path)


def isfile(path) -> bool:
    if is_uri(path):
        return exists(path) and not isdir(path)
    return os.path.isfile(path)


def listdir(path) -> list[str]:
    """The names in directory `path` (without a trailing "/")."""
    if is_uri(path):
        return [name.rstrip("/") for name in _on_uri("listdir", path)]
    return os.listdir(path)


def makedirs(path) -> None:
    if is_uri(path):
        _on_uri("makedirs", path)
    else:
        os.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def _os_errors():
    """TensorFlow's file errors (NotFoundError, PermissionDeniedError, ...) as OSError, which
    readers of local files already handle."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as e:
        raise OSError(e.message.strip().splitlines()[0] if e.message else str(e)) from None


class _GFileRaw(io.RawIOBase):
    """A tf.io.gfile.GFile opened "rb" as a raw stream, so that io.BufferedReader gives it
    what GFile lacks (readline with a size limit, peek)."""

    def __init__(self, f) -> None:
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with _os_errors():
            data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with _os_errors():
            self._f.seek(offset, whence)
            return self._f.tell()

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()


def open(path, mode: str = "r", encoding: str | None = None):  # noqa: A001
    """A file object of `path`; text modes decode utf-8 (or `encoding`, local files). A
    URI opened to read ("r", "rb") reads through a buffer (readline(size), seek, tell, as
    a local file) and raises OSError where TensorFlow raises its own errors."""
    if is_uri(path):
        f = _gfile(path).GFile(str(path), "rb" if mode in ("r", "rb") else mode)
        if mode not in ("r", "rb"):
            return f
        buffered = io.BufferedReader(_GFileRaw(f), 1 << 20)
        return buffered if mode == "rb" else io.TextIOWrapper(buffered, encoding="utf-8")
    import builtins

    return builtins.open(path, mode, encoding=None if "b" in mode else encoding or "utf-8")


class Stat(NamedTuple):
    st_size: int
    st_mtime_ns: int


def stat(path) -> Stat:
    if is_uri(path):
        found = _on_uri("stat", path)
        return Stat(int(found.length), int(found.mtime_nsec))
    found = os.stat(path)
    return Stat(found.st_size, found.st_mtime_ns)


def walk(path) -> Iterator[tuple[str, list[str], list[str]]]:
    """(directory, subdirectory names, file names) under `path`, top down, as os.walk."""
    if is_uri(path):
        with _os_errors():
            for directory, subdirs, names in _gfile(path).walk(str(path)):
                yield (directory.rstrip("/"), [d.rstrip("/") for d in subdirs], list(names))
    else:
        yield from os.walk(path)


class UriPath:
    """The part of pathlib.Path that reading a data directory needs, for a URI: `/`,
    `name`, `parent`, `is_file()`, `is_dir()`, `stat()`, `open()`."""

    def __init__(self, uri: str) -> None:
        self._uri = str(uri).rstrip("/")

    def __truediv__(self, name) -> "UriPath":
        return UriPath(posixpath.join(self._uri, str(name)))

    def __str__(self) -> str:
        return self._uri

    def __repr__(self) -> str:
        return f"UriPath({self._uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UriPath) and other._uri == self._uri

    def __hash__(self) -> int:
        return hash(self._uri)

    @property
    def name(self) -> str:
        return posixpath.basename(self._uri)

    @property
    def parent(self) -> "UriPath":
        return UriPath(posixpath.dirname(self._uri))

    def is_file(self) -> bool:
        return isfile(self._uri)

    def is_dir(self) -> bool:
        return isdir(self._uri)

    def stat(self) -> Stat:
        return stat(self._uri)

    def open(self, mode: str = "r", encoding: str | None = None):
        return open(self._uri, mode, encoding)


def path(location) -> pathlib.Path | UriPath:
    """A pathlib.Path for a local path, a UriPath for a URI."""
    return UriPath(str(location)) if is_uri(location) else pathlib.Path(location)


def beam_args(paths: Sequence[str], given: Sequence[str],
              environ: Mapping[str, str] | None = None) -> list[str]:
    """The Beam pipeline args that point Beam's S3 file system where tensorflow-io goes
    when one of `paths` is an s3:// URI: --s3_endpoint_url from S3_ENDPOINT (http:// when
    it names no scheme and S3_USE_HTTPS is 0) and --s3_region_name from AWS_REGION, each
    unless `given` sets it. The keys are not passed (they would be recorded with the args
    in ML Metadata): boto3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY itself."""
    environ = os.environ if environ is None else environ
    if not any(scheme(p) == "s3" for p in paths):
        return []

    def given_option(name):
        return any(a == name or a.startswith(name + "=") for a in given)

    args = []
    endpoint = environ.get("S3_ENDPOINT", "").strip()
    if endpoint and not given_option("--s3_endpoint_url"):
        if "://" not in endpoint:
            https = environ.get("S3_USE_HTTPS", "1").strip().lower() not in ("0", "false")
            endpoint = ("https://" if https else "http://") + endpoint
        args.append(f"--s3_endpoint_url={endpoint}")
    region = environ.get("AWS_REGION", "").strip()
    if region and not given_option("--s3_region_name"):
        args.append(f"--s3_region_name={region}")
    return args
