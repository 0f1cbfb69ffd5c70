"""Serialized tf.Examples of raw features (trainer/features.py): the one example builder.

MovieLensExampleGen writes its rating and catalog examples with it, `movierec evaluate`
and the tests feed the model with it, and the server builds `serving_default`'s examples
from JSON feature objects with it. It writes protobuf's wire format directly (a
tf.train.Example is a Features message whose map entries can be concatenated), several
times faster than building protobuf objects per rating; tests/test_example_gen.py checks
that what it writes parses equal to the protobuf-built Example.

    entries({name: value or list of values, ...}) -> bytes   # the Features map entries
    example(entries_a, entries_b, ...) -> bytes               # one serialized Example
    serialize({...}) == example(entries({...}))

Strings may be str (written as UTF-8) or bytes; int64 and float features take numbers.
A name that is not a raw feature, or several values for a single-valued feature, raise
ValueError naming the feature.
"""

from __future__ import annotations

import struct
from typing import Mapping

from trainer import features as F

_SPECS = {f.name: f for f in F.RATING_EXAMPLE_FEATURES + F.HISTORY_FEATURES}
_FLOATS = struct.Struct("<f")


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 on the wire: negatives as ten-byte two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (tag byte = field number << 3 | 2)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _utf8(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _feature(spec: F.RawFeature, values: list) -> bytes:
    """A serialized tf.train.Feature: bytes_list (field 1), float_list (2), int64_list (3);
    each list's values in field 1 (numbers packed)."""
    if spec.dtype.is_integer:
        return _field(0x1A, _field(0x0A, b"".join(_varint(int(v)) for v in values))
                      if values else b"")
    if spec.dtype.is_floating:
        return _field(0x12, _field(0x0A, b"".join(_FLOATS.pack(float(v)) for v in values))
                      if values else b"")
    return _field(0x0A, b"".join(_field(0x0A, _utf8(v)) for v in values))


def entry(name: str, value) -> bytes:
    """One entry of tf.train.Features' map: key (field 1) and Feature (field 2)."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown feature {name!r} (known: {', '.join(sorted(_SPECS))})")
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not spec.multivalent and len(values) != 1:
        raise ValueError(f"feature {name!r} takes one value, got {len(values)}")
    return _field(0x0A, _field(0x0A, name.encode()) + _field(0x12, _feature(spec, values)))


def entries(values: Mapping[str, object]) -> bytes:
    """The serialized map entries of raw features {name: value or list of values}."""
    return b"".join(entry(name, value) for name, value in values.items())


def example(*parts: bytes) -> bytes:
    """A serialized tf.train.Example whose features are the concatenated entries."""
    return _field(0x0A, b"".join(parts))  # Example.features (field 1)


def serialize(values: Mapping[str, object]) -> bytes:
    """A serialized tf.train.Example of raw features {name: value or list of values}."""
    return example(entries(values))
