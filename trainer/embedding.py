"""Embedding tables that say, where they are created, what their rows are.

A `TaggedEmbedding` is a Keras embedding whose `tag` names the transformed feature whose
vocabulary indexes its rows (for example F.MOVIE_ID_XF: row i + `reserved` is movie_id_xf
i), after `reserved` leading rows that no vocabulary entry uses (the padding row of a
0-padded history). Warm start (trainer/warm_start.py) reads these tags to carry rows over
from an earlier model through the vocabularies; a table without a tag (timestamp or year
buckets: the same rows in every run) is copied as it is.
"""

from __future__ import annotations

import tensorflow as tf

from trainer import features as F


class TaggedEmbedding(tf.keras.layers.Embedding):
    """tf.keras.layers.Embedding with `tag` (a key of F.VOCABS) and `reserved` rows."""

    def __init__(self, input_dim: int, output_dim: int, *, tag: str, reserved: int = 0,
                 **kwargs):
        if tag not in F.VOCABS:
            raise ValueError(f"unknown embedding tag {tag!r} ({', '.join(F.VOCABS)})")
        super().__init__(input_dim, output_dim, **kwargs)
        self.tag = tag
        self.reserved = int(reserved)

    def get_config(self):
        return {**super().get_config(), "tag": self.tag, "reserved": self.reserved}


def table_tags(module) -> dict:
    """{variable reference: (tag, reserved rows)} of every TaggedEmbedding under `module`
    (a built Keras model or layer)."""
    out = {}
    for layer in (module, *module.submodules):
        if isinstance(layer, TaggedEmbedding) and layer.built:
            out[layer.embeddings.ref()] = (layer.tag, layer.reserved)
    return out
