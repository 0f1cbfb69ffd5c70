"""One loaded SavedModel version and the TF-Serving REST conventions around it.

`ServedModel.load(path, version)` loads a version directory into a Session of its own
(trainer/saved_model.load_session: the signatures run as inlined graphs), reads its
SignatureDefs (for the metadata endpoint) and warms every signature up once.
`Signature.feeds(request)` turns the JSON body of a TF Serving `:predict` request — row
format (`instances`) or columnar format (`inputs`) — into numpy inputs, checking names,
dtypes and shapes against the signature; `Signature.call_batch` runs one or several requests' inputs as one call; and
`Signature.response` shapes the answer as TF Serving does (`predictions` / `outputs`).

Conventions (TF Serving's REST API):
- string values are JSON strings (UTF-8); binary values may be `{"b64": "<base64>"}`;
  string outputs come back as strings, or `{"b64": ...}` when they are not valid UTF-8;
- row format: `instances` is a list with one entry per example; an entry is an object
  `{input name: value}`, or, when the signature has one input, the bare value;
- columnar format: `inputs` is an object `{input name: batched value}`, or, when the
  signature has one input, the bare batched value;
- answers: `{"predictions": [...]}` for row format (one object per instance when the
  signature has several outputs, the bare value when it has one); `{"outputs": {...}}` for
  columnar format (the bare batched value when there is one output).

movierec's convenience for `serving_default` (input `examples`, serialized tf.Examples):
besides `{"b64": <serialized tf.Example>}`, an example may be given as a plain JSON object of
raw feature values named as in trainer/features.py, e.g.
`{"user_id": "42", "timestamp": 881250949, "user_age": 30, "user_gender": "M",
"user_occupation": "writer", "user_zip": "55105", "movie_id": "50",
"movie_title": "Star Wars (1977)", "movie_genres": ["Action", "Sci-Fi"], "movie_year": 1977}`;
the server builds the tf.Example from it.
"""

from __future__ import annotations

import base64
import binascii
import math
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow.core.protobuf import config_pb2  # noqa: E402

from trainer import examples  # noqa: E402
from trainer import features as F  # noqa: E402
from trainer import saved_model  # noqa: E402
from trainer import signatures as S  # noqa: E402

MAX_BATCH = 10_000  # instances per request

_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class RequestError(Exception):
    """A bad request: answered with HTTP 400 and {"error": message}."""


# ------------------------------------------------------------------------ JSON -> tensors
def _shape_of(value, where: str) -> tuple:
    """The shape of a nested JSON list, read along its first elements (scalars: ());
    _flatten then checks that every element agrees."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _flatten(value, shape: tuple, where: str, out: list):
    if not shape:
        if isinstance(value, list):
            raise RequestError(f"{where}: ragged or over-nested list")
        out.append(value)
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise RequestError(f"{where}: ragged list (all rows must have the same length)")
    inner = shape[1:]
    if not inner:  # the common case: a list of scalars (a list among them: _array says)
        out.extend(value)
        return
    for item in value:
        _flatten(item, inner, where, out)


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _to_bytes(value, where: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:  # JSON may carry lone surrogates ("\ud800")
            raise RequestError(f"{where}: string is not valid Unicode") from None
    if isinstance(value, dict) and len(value) == 1 and "b64" in value:
        encoded = value["b64"]
        if not isinstance(encoded, str):
            raise RequestError(f"{where}: b64 value must be a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"{where}: invalid base64: {e}") from None
    raise RequestError(f"{where}: expected a string (or {{\"b64\": ...}}), got "
                       f"{_describe(value)}")


def _to_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(f"{where}: expected an integer, got {_describe(value)}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise RequestError(f"{where}: {value} is out of the int64 range")
    return value


def _to_float(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
            return float(value.replace("Infinity", "inf"))
        raise RequestError(f"{where}: expected a number, got {_describe(value)}")
    return float(value)


def _to_bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{where}: expected true or false, got {_describe(value)}")
    return value


def _plain(flat: list, np_dtype):
    """The values as the array takes them when every one is already of the input's JSON
    type and needs no check (strings: str, valid UTF-8; floats: int or float; integers: int
    in the int64 range; bools are never plain), so that a long history does not pay for
    one check call per value; None when one is not (the one-by-one path then checks them
    and names the bad one)."""
    if not flat:
        return flat
    types = set(map(type, flat))
    if np_dtype is object:
        if types == {str}:
            try:
                return list(map(str.encode, flat))  # UTF-8
            except UnicodeEncodeError:  # a lone surrogate: the check names it
                return None
        return None
    if np_dtype is np.bool_:
        return None
    kind = np.dtype(np_dtype).kind
    if kind == "f":
        return flat if types <= {float, int} else None
    if kind in "iu" and types == {int} and min(flat) >= _INT64_MIN \
            and max(flat) <= _INT64_MAX:
        return flat
    return None


def _numpy_dtype(dtype: tf.DType):
    if dtype == tf.string:
        return object, _to_bytes
    if dtype == tf.bool:
        return np.bool_, _to_bool
    if dtype.is_integer:
        return dtype.as_numpy_dtype, _to_int
    if dtype.is_floating:
        return dtype.as_numpy_dtype, _to_float
    raise RequestError(f"inputs of dtype {dtype.name} are not supported")


def _example_from_features(features: dict, where: str) -> bytes:
    """A serialized tf.Example from {raw feature name: value or list of values}: each
    value checked and converted as JSON requires, then trainer/examples.py builds it."""
    values = {}
    for name, value in features.items():
        spec = _RAW_FEATURES.get(name)
        if spec is None:
            raise RequestError(f"{where}: unknown feature {name!r} (known: "
                               f"{', '.join(sorted(_RAW_FEATURES))})")
        items = value if isinstance(value, list) else [value]
        if not spec.multivalent and len(items) != 1:
            raise RequestError(f"{where}: feature {name!r} takes one value, got "
                               f"{len(items)}")
        at = f"{where}: feature {name!r}"
        convert = (_to_bytes if spec.dtype == tf.string else
                   _to_int if spec.dtype.is_integer else _to_float)
        values[name] = [convert(v, at) for v in items]
    return examples.serialize(values)


_RAW_FEATURES = {f.name: f for f in F.RATING_EXAMPLE_FEATURES}


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


class Signature:
    """One signature of a loaded model: its input/output specs and a call."""

    def __init__(self, name: str, fn: "GraphSignature", signature_def: dict):
        self.name = name
        self.fn = fn
        self.inputs = fn.inputs  # name -> TensorSpec
        self.outputs = fn.outputs  # name -> TensorSpec
        self.signature_def = signature_def
        self._converters = {n: _numpy_dtype(s.dtype) for n, s in self.inputs.items()}
        # inputs a request may leave out (trainer.signatures.OPTIONAL_INPUTS), by value
        self.optional = {n: v for n, v in S.OPTIONAL_INPUTS.get(name, {}).items()
                         if n in self.inputs}
        # the one input a request must give (the others optional): instances may be its
        # plain values
        required = [n for n in self.inputs if n not in self.optional]
        self._single_input = required[0] if len(required) == 1 else None
        self._single_output = next(iter(self.outputs)) if len(self.outputs) == 1 else None
        self._takes_examples = (self._single_input == S.EXAMPLES
                                and self.inputs[S.EXAMPLES].dtype == tf.string)
        self._names = list(self.inputs)
        self._name_set = frozenset(self.inputs)
        # per input: its dimensions after the batch's (None: any rank), and the fixed ones
        self._dims = {n: None if s.shape.rank is None else s.shape.as_list()
                      for n, s in self.inputs.items()}
        self._fixed = {n: [(i, d) for i, d in enumerate(dims) if d is not None]
                       for n, dims in self._dims.items() if dims is not None}
        # an optional input no instance gives: its default's row, repeated per instance
        self._default_rows = {n: self._array(n, [v], None, f"the default of {n!r}")
                              for n, v in self.optional.items()}

    # ----------------------------------------------------------------- request -> tensors
    def _example_value(self, value, where: str):
        """serving_default's convenience: a feature dict is one serialized tf.Example."""
        if (self._takes_examples and isinstance(value, dict) and not _is_b64(value)):
            return _example_from_features(value, where)  # bytes: never from JSON
        return value

    def _array(self, name: str, value, batched_shape: tuple | None, where: str):
        """A numpy array for input `name` from a nested JSON value ([batch] + spec[1:])."""
        np_dtype, convert = self._converters[name]
        shape = _shape_of(value, where) if batched_shape is None else batched_shape
        dims = self._dims[name]
        if dims is not None:
            if len(shape) != len(dims):
                expected = self.inputs[name].shape
                raise RequestError(
                    f"{where}: expected a value of rank {expected.rank - 1} per instance "
                    f"(shape {_shape_str(expected)} with the batch), got shape "
                    f"{list(shape)}")
            for i, want in self._fixed[name]:
                if shape[i] != want:
                    raise RequestError(f"{where}: dimension {i} must be {want}, got "
                                       f"{shape[i]}")
        if len(shape) > 32:
            raise RequestError(f"{where}: nested too deeply")
        flat: list = []
        _flatten(value, shape, where, flat)
        if shape and shape[0] == 0:
            raise RequestError(f"{where}: empty batch")
        if shape and shape[0] > MAX_BATCH:
            raise RequestError(f"{where}: at most {MAX_BATCH} instances per request")
        converted = _plain(flat, np_dtype)
        if converted is None:  # some value needs its check (or conversion): one by one
            if any(isinstance(v, list) for v in flat):
                raise RequestError(f"{where}: ragged or over-nested list")
            converted = [v if type(v) is bytes else convert(v, where) for v in flat]
        if name == S.K and np_dtype is not object and np.dtype(np_dtype).kind in "iu":
            too_big = [k for k in converted if k > S.MAX_K]
            if too_big:
                raise RequestError(f"{where}: k must be at most {S.MAX_K}, got {too_big[0]}")
        array = np.empty(len(converted), dtype=object) if np_dtype is object \
            else np.array(converted, dtype=np_dtype)
        if np_dtype is object:
            array[:] = converted
        return array.reshape(shape)

    def _row_feeds(self, instances) -> dict:
        if not isinstance(instances, list):
            raise RequestError("'instances' must be a list")
        if not instances:
            raise RequestError("'instances' is empty")
        if len(instances) > MAX_BATCH:
            raise RequestError(f"at most {MAX_BATCH} instances per request")
        names = self._names
        columns = {n: [] for n in names}
        given = set()  # the inputs an instance names
        for i, instance in enumerate(instances):
            if isinstance(instance, dict) and not _is_b64(instance) and (
                    not self._takes_examples or set(instance) == {S.EXAMPLES}):
                self._check_input_names(instance, names, f"instances[{i}]: ")
                given.update(instance)
                for n in names:
                    columns[n].append(instance[n] if n in instance else self.optional[n])
            elif self._single_input is not None:
                given.add(self._single_input)
                for n in names:
                    columns[n].append(instance if n == self._single_input
                                      else self.optional[n])
            else:
                raise RequestError(f"instances[{i}]: signature {self.name!r} has several "
                                   f"inputs ({', '.join(names)}): each instance must be an "
                                   f"object naming them")
        if self._takes_examples:
            columns[S.EXAMPLES] = [self._example_value(v, f"instances[{i}]")
                                   for i, v in enumerate(columns[S.EXAMPLES])]
        _pad_histories(columns, self.inputs)
        feeds = {}
        for n in names:
            if n not in given:  # optional, left out by every instance
                feeds[n] = np.repeat(self._default_rows[n], len(instances), axis=0)
                continue
            per_instance = _shape_of(columns[n][0], "")
            feeds[n] = self._array(n, columns[n], (len(instances),) + per_instance,
                                   f"instances: input {n!r}")
        return feeds

    def _check_input_names(self, given: dict, names: list, where: str) -> None:
        if self._name_set.issuperset(given):
            unknown = ()
        else:
            unknown = sorted(set(given) - self._name_set)
        if unknown:
            raise RequestError(f"{where}unknown input {unknown[0]!r} for signature "
                               f"{self.name!r} (inputs: {', '.join(names)})")
        missing = [n for n in names if n not in given and n not in self.optional]
        if missing:
            raise RequestError(f"{where}missing input {missing[0]!r} for signature "
                               f"{self.name!r}")

    def _columnar_feeds(self, inputs) -> dict:
        names = list(self.inputs)
        if isinstance(inputs, dict) and not _is_b64(inputs) and not (
                self._takes_examples and set(inputs) != {S.EXAMPLES}):
            self._check_input_names(inputs, names, "")
            values = inputs
        elif self._single_input is not None:
            values = {self._single_input: inputs}
        else:
            raise RequestError(f"signature {self.name!r} has several inputs "
                               f"({', '.join(names)}): 'inputs' must be an object naming them")
        feeds = {}
        for n in [n for n in names if n in values]:
            value = values[n]
            if self._takes_examples and isinstance(value, list):
                value = [self._example_value(v, f"inputs.{n}[{i}]")
                         for i, v in enumerate(value)]
            feeds[n] = self._array(n, value, None, f"inputs: input {n!r}")
        sizes = {a.shape[0] for a in feeds.values() if a.ndim}
        if len(sizes) > 1:
            raise RequestError(f"inputs have different batch sizes: {sorted(sizes)}")
        batch = next(iter(sizes), 1)
        for n in [n for n in names if n not in feeds]:  # optional, left out
            feeds[n] = self._array(n, [self.optional[n]] * batch, None,
                                   f"inputs: input {n!r}")
        return feeds

    def feeds(self, request: dict, catalog=None) -> tuple[dict, bool]:
        """Numpy inputs ([batch, ...] each) for a parsed request body, and whether it is in
        row format. A request's history is checked (check_history) against `catalog`
        (the model's movie ids) when given."""
        has_rows, has_cols = "instances" in request, "inputs" in request
        if has_rows == has_cols:
            raise RequestError("the request must have exactly one of 'instances' (row "
                               "format) and 'inputs' (columnar format)")
        if has_rows:
            feeds, rows = self._row_feeds(request["instances"]), True
        else:
            if isinstance(request["inputs"], dict):
                _pad_histories({n: v for n, v in request["inputs"].items()}, self.inputs,
                               columnar=request["inputs"])
            feeds, rows = self._columnar_feeds(request["inputs"]), False
        check_history(feeds, catalog)
        return feeds, rows

    # ------------------------------------------------------------------------ the call
    def batch_key(self, feeds: dict):
        """Requests with equal keys can run as one batch (None: this one runs alone).
        A signature is batched only when every output has the batch as its first and only
        unknown dimension, so that a batch's outputs split back into per-request rows
        (recommend_at's outputs are [batch, largest k of the batch]: never batched), and
        every input too, but for the request histories ([batch, L], any L: `paddable`),
        which a batch pads to its longest."""
        if not self.batchable:
            return None
        return (self.name,) + tuple(feeds[n].shape[1:] for n in self.inputs
                                    if n not in self.paddable)

    @property
    def paddable(self) -> dict:
        """{input: its padding value}: the history inputs ([batch, L] of any L, "" / 0
        padding, as trainer/signatures.py's HISTORY_INPUTS say) that a batch of requests
        pads to a common width."""
        if not hasattr(self, "_paddable"):
            self._paddable = {
                n: (b"" if spec.dtype == tf.string else 0)
                for n, spec in self.inputs.items()
                if n in S.HISTORY_INPUTS and spec.shape.as_list() == [None, None]}
        return self._paddable

    @property
    def batchable(self) -> bool:
        if not hasattr(self, "_batchable"):
            fixed = list(self.outputs.values()) + [
                spec for n, spec in self.inputs.items() if n not in self.paddable]
            self._batchable = all(
                spec.shape.rank and spec.shape[0] is None
                and all(d is not None for d in spec.shape.as_list()[1:])
                for spec in fixed)
        return self._batchable

    def _join(self, requests: list) -> dict:
        """The feeds of several requests as one batch: each input concatenated, the
        `paddable` ones (histories) first padded to the batch's widest."""
        joined = {}
        for name in self.inputs:
            parts = [f[name] for f in requests]
            if name in self.paddable:
                width = max(p.shape[1] for p in parts)
                parts = [p if p.shape[1] == width else _pad_columns(p, width,
                                                                    self.paddable[name])
                         for p in parts]
            joined[name] = np.concatenate(parts)
        return joined

    def call(self, feeds: dict) -> dict:
        """Runs the signature on numpy inputs; numpy outputs. Thread-safe."""
        return self.fn(**feeds)

    def call_batch(self, requests: list) -> list:
        """Runs several requests' feeds as one call; per request, its outputs or the
        exception it raised. When the batch fails, each request runs alone, so that one bad
        request does not fail the others."""
        if len(requests) == 1:
            try:
                return [self.call(requests[0])]
            except Exception as e:  # noqa: BLE001 - handed to the request
                return [e]
        sizes = [len(next(iter(f.values()))) for f in requests]
        try:
            outputs = self.call(self._join(requests))
            total = sum(sizes)
            if any(v.shape[:1] != (total,) for v in outputs.values()):
                raise ValueError("outputs do not follow the batch")
        except Exception:  # noqa: BLE001 - retried one by one
            return [r for f in requests for r in self.call_batch([f])]
        results, start = [], 0
        for size in sizes:
            results.append({name: value[start:start + size] for name, value in outputs.items()})
            start += size
        return results

    def response(self, outputs: dict, row_format: bool) -> dict:
        if row_format:
            if self._single_output is not None:
                return {"predictions": _jsonable(outputs[self._single_output])}
            columns = {name: _jsonable(value) for name, value in outputs.items()}
            batch = len(next(iter(columns.values())))
            return {"predictions": [{name: column[i] for name, column in columns.items()}
                                    for i in range(batch)]}
        if self._single_output is not None:
            return {"outputs": _jsonable(outputs[self._single_output])}
        return {"outputs": {name: _jsonable(value) for name, value in outputs.items()}}

    def warm_up(self):
        """One call with a dummy batch of one (errors, e.g. an empty tf.Example, are fine):
        the first real request then does not pay for the functions' first run."""
        feeds = {}
        for name, spec in self.inputs.items():
            shape = [1 if d is None else d for d in (spec.shape.as_list() or [])] or []
            if spec.dtype == tf.string:
                feeds[name] = np.full(shape, b"", dtype=object)
            else:
                feeds[name] = np.full(shape, S.DEFAULT_K if name == S.K else 0,
                                      dtype=spec.dtype.as_numpy_dtype)
        try:
            self.call(feeds)
        except Exception:  # noqa: BLE001 - warm-up only
            pass


def _pad_columns(array: np.ndarray, width: int, value) -> np.ndarray:
    """A [batch, w] array widened to [batch, width] with `value` on the right."""
    out = np.full((array.shape[0], width), value, dtype=array.dtype)
    out[:, :array.shape[1]] = array
    return out


def _pad_histories(columns: dict, inputs: dict, columnar: dict | None = None) -> None:
    """Pads ragged history lists (one per instance, S.HISTORY_INPUTS) to the longest with
    "" / 0, in place (in `columnar`, the request's inputs, for the columnar format); an
    instance's three lists must have one length, at most S.MAX_HISTORY."""
    names = [n for n in S.HISTORY_INPUTS if n in inputs and n in columns]
    if not names:
        return
    rows = {n: columns[n] for n in names}
    if not all(isinstance(v, list) and all(isinstance(r, list) for r in v)
               for v in rows.values()):
        return  # not lists of lists: the shape check says what is wrong
    count = {len(v) for v in rows.values()}
    if len(count) > 1:
        raise RequestError(f"history inputs have different batch sizes: {sorted(count)}")
    for i in range(count.pop()):
        lengths = {n: len(rows[n][i]) for n in names}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{n} {k}" for n, k in lengths.items())
            raise RequestError(f"instance {i}: the history lists differ in length ({shown})")
        if max(lengths.values()) > S.MAX_HISTORY:
            raise RequestError(f"instance {i}: {names[0]} has {max(lengths.values())} "
                               f"entries, at most {S.MAX_HISTORY}")
    width = max((len(r) for v in rows.values() for r in v), default=0)
    for n in names:
        pad = "" if n == S.HISTORY_MOVIE_IDS else 0
        padded = [r if len(r) == width else list(r) + [pad] * (width - len(r))
                  for r in rows[n]]
        if columnar is not None:
            columnar[n] = padded
        else:
            columns[n] = padded


def check_history(feeds: dict, catalog=None) -> None:
    """400s for a bad request history: ratings outside S.RATING_RANGE (padding aside) and,
    given `catalog` (a set of movie ids), movies the model does not know."""
    if S.HISTORY_MOVIE_IDS not in feeds:
        return
    ids = feeds[S.HISTORY_MOVIE_IDS]
    if not ids.size:
        return
    ratings = feeds.get(S.HISTORY_RATINGS)
    low, high = S.RATING_RANGE
    # the common case, checked at once: every entry a known movie rated in range
    if (catalog is None or catalog.issuperset(ids.ravel().tolist())) and (
            ratings is None or ratings.shape != ids.shape
            or ((ratings >= low) & (ratings <= high)).all()):
        return
    given = (ids != b"") & (ids != "")
    if ratings is not None and ratings.shape == ids.shape:
        bad = given & ((ratings < low) | (ratings > high) | ~np.isfinite(ratings))
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            raise RequestError(f"{S.HISTORY_RATINGS}[{i}][{j}]: rating {ratings[i, j]:g} "
                               f"outside {low:g}..{high:g}")
    if catalog is not None and given.any():
        named = ids[given].tolist()  # row-major, as np.argwhere lists their positions
        unknown = None if catalog.issuperset(named) else next(
            n for n, movie in enumerate(named) if movie not in catalog)
        if unknown is not None:
            i, j = map(int, np.argwhere(given)[unknown])
            movie = named[unknown]
            shown = movie.decode() if isinstance(movie, bytes) else movie
            raise RequestError(f"{S.HISTORY_MOVIE_IDS}[{i}][{j}]: unknown movie "
                               f"{shown!r}")


def _shape_str(shape: tf.TensorShape) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape.as_list()) + "]"


# ------------------------------------------------------------------------ tensors -> JSON
def _decode(value: bytes):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def _json_float(value: float):
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _jsonable(array: np.ndarray):
    """A numpy output as JSON-ready Python values: strings decoded, float32 as their
    shortest decimal form (3.6, not 3.5999999046325684)."""
    if array.dtype == object:
        flat = [_decode(v) for v in array.ravel().tolist()]
    elif array.dtype == np.float32 or array.dtype == np.float16:
        # numpy prints a float32 with the fewest digits that read back to it
        flat = [_json_float(float(s)) for s in array.ravel().astype(str).tolist()]
    elif array.dtype.kind == "f":
        flat = [_json_float(v) for v in array.ravel().tolist()]
    else:
        return array.tolist()
    if array.ndim == 1:
        return flat
    if array.ndim == 0:
        return flat[0]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape).tolist()


# ------------------------------------------------------------------------ a loaded version
class GraphSignature:
    """A signature of a version loaded into a Session (trainer/saved_model.load_session):
    its input and output specs ({name: TensorSpec}) from the SignatureDef, and a call
    (keyword numpy inputs, a dict of numpy outputs) through one Session callable
    (Session._make_callable_from_options, the fast path Keras 1 used)."""

    def __init__(self, session, signature_def):
        def spec(name, info):
            shape = (tf.TensorShape(None) if info.tensor_shape.unknown_rank else
                     tf.TensorShape([d.size if d.size >= 0 else None
                                     for d in info.tensor_shape.dim]))
            return tf.TensorSpec(shape, tf.as_dtype(info.dtype), name=name)

        inputs = sorted(signature_def.inputs.items())
        outputs = sorted(signature_def.outputs.items())
        self.inputs = {n: spec(n, i) for n, i in inputs}
        self.outputs = {n: spec(n, i) for n, i in outputs}
        self._inputs = [n for n, _ in inputs]
        self._outputs = [n for n, _ in outputs]
        options = config_pb2.CallableOptions(feed=[i.name for _, i in inputs],
                                             fetch=[i.name for _, i in outputs])
        # the graph runs on the calling thread (the session has a pool of its own,
        # trainer/saved_model.load_session): no hand-off to a pool thread and back, a
        # quarter less CPU per call; a callable from options, as Session.make_callable
        # with a feed list goes through the whole of Session.run's feed handling per call
        options.run_options.inter_op_thread_pool = -1
        self._run = session._make_callable_from_options(options)

    def __call__(self, **feeds) -> dict:
        values = self._run(*[feeds[n] for n in self._inputs])
        return dict(zip(self._outputs, values))


def _signature_def_json(meta_graph) -> dict:
    """{name: SignatureDef as TF Serving prints it}."""
    defs = {}
    for name, sig in meta_graph.signature_def.items():
        if name.startswith("__"):  # __saved_model_init_op: not callable
            continue
        defs[name] = json_format.MessageToDict(
            sig, preserving_proto_field_name=True, including_default_value_fields=True)
    return defs


def _catalog_ids(path: str):
    """The movie ids of a movierec version (the `movie_ids` Variable, read from its
    checkpoint), as a set; None for a model without them."""
    try:
        ids = tf.train.load_variable(f"{path.rstrip('/')}/variables/variables",
                                     f"{S.MOVIE_IDS}/.ATTRIBUTES/VARIABLE_VALUE")
    except (tf.errors.NotFoundError, ValueError):
        return None
    return set(np.asarray(ids).ravel().tolist())


class ServedModel:
    """A SavedModel version loaded for serving: into a Session of its own, its signatures
    run as graphs (GraphSignature)."""

    def __init__(self, version: int, path: str, session, signatures: dict, catalog=None):
        self.version = version
        self.path = path
        self.session = session  # the signatures' graph and state
        self.signatures = signatures
        self.catalog = catalog  # a history's movies are checked against it (None: not)

    @classmethod
    def load(cls, path: str, version: int, warm_up: bool = True,
             threads: int = 0) -> "ServedModel":
        """threads: TensorFlow's threads (trainer/saved_model.load_session)."""
        session, meta_graph = saved_model.load_session(path, threads)
        defs = _signature_def_json(meta_graph)
        signatures = {name: Signature(name, GraphSignature(session, sig), defs[name])
                      for name, sig in meta_graph.signature_def.items() if name in defs}
        if not signatures:
            session.close()
            raise ValueError(f"{path} has no serving signatures")
        if warm_up:
            for signature in signatures.values():
                signature.warm_up()
        return cls(version, path, session, signatures, _catalog_ids(path))

    def metadata(self, model_name: str) -> dict:
        """GetModelMetadata's JSON (TF Serving's REST shape)."""
        return {
            "model_spec": {"name": model_name, "signature_name": "",
                           "version": str(self.version)},
            "metadata": {"signature_def": {
                "signature_def": {name: sig.signature_def
                                  for name, sig in sorted(self.signatures.items())}}},
        }


# ------------------------------------------------------------------------ the catalog
def movie_catalog(module) -> tuple[list[str], list[str]]:
    """(movie ids, titles) of a loaded movierec SavedModel, in catalog order."""
    ids, titles = getattr(module, S.MOVIE_IDS, None), getattr(module, S.MOVIE_TITLES, None)
    if ids is None or titles is None:
        raise ValueError("the model does not expose its movie catalog (movie_ids, "
                         "movie_titles): was it exported by trainer/export.py?")
    return ([v.decode("utf-8") for v in np.asarray(ids.numpy()).ravel()],
            [v.decode("utf-8") for v in np.asarray(titles.numpy()).ravel()])
