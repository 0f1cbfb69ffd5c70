"""Warm start: a new model's trainable weights initialized from an earlier exported model.

Vocabularies change between runs when the data changes (new users and movies, a different
frequency order), so an embedding table is copied row by row through the tokens: a row of
the new table gets the old row of the same user / movie / token, and keeps its fresh
initialization when the token is new. Variables whose shape changed for another reason
(a different embedding size, a different tower depth) keep their fresh initialization too.
The users' history tables and other non-trainable state are rebuilt from the new data.

Which vocabulary indexes a table's rows is the table's tag, set where the embedding is
created (trainer/embedding.py's TaggedEmbedding: tag and reserved leading rows); a variable
of the new model is paired with the earlier export's variable at the same object-graph
path (the export holds the trained model's towers).
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import tensorflow as tf

from trainer import embedding
from trainer import features as F

def _read_vocab(path: str) -> list:
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip(b"\n") for line in f]


def row_map(old_vocab: list, new_vocab: list, shift: int, rows: int) -> np.ndarray:
    """For each row of a new table: the old table's row of the same token, or -1.
    Rows: `shift` leading reserved rows, the vocabulary, then OOV buckets."""
    old_index = {token: i for i, token in enumerate(old_vocab)}
    mapping = np.full(rows, -1, dtype=np.int64)
    mapping[:shift] = np.arange(shift)
    for i, token in enumerate(new_vocab):
        if shift + i < rows and token in old_index:
            mapping[shift + i] = shift + old_index[token]
    for j in range(rows - shift - len(new_vocab)):  # OOV buckets map onto OOV buckets
        mapping[shift + len(new_vocab) + j] = shift + len(old_vocab) + j
    return mapping


_PARTS = ("query_tower", "candidate_tower", "rating_model")
# Keras' flat lists of the same variables in a SavedModel: the attribute paths are used.
_LISTS = ("variables", "trainable_variables", "non_trainable_variables",
          "regularization_losses", "keras_api")


def _variables(module) -> dict:
    """{object-graph path: variable} under the towers of a model or of a loaded export
    (the same paths on both sides: the export holds the trained model's towers)."""
    out, seen = {}, set()

    def walk(obj, prefix):
        for name, child in tf.train.TrackableView(obj).children(obj).items():
            if name in _LISTS:
                continue
            path = f"{prefix}/{name}"
            if isinstance(child, tf.Variable):
                out.setdefault(path, child)
            elif id(child) not in seen and "Function" not in type(child).__name__:
                seen.add(id(child))
                walk(child, path)

    for part in _PARTS:
        walk(getattr(module, part), part)
    return out


def _previous_layout(path: str) -> str:
    """Where the variable at `path` was in an export made before the towers were composed
    of layers (one tower class, its tables under private attribute names), so that a
    model exported then still warm-starts one of today."""
    path = f"/{path}"
    tower, inside, rest = path.partition("/context/0/")
    if inside:  # a history block's pooling table
        raters = tower.rsplit("/", 1)[-1] in ("candidate_tower", "candidate")
        names = {"mean": "_rater_embedding" if raters else "_history_embedding",
                 "rated": "_rater_rated_embedding" if raters else "_rated_embedding",
                 "session": "_session_embedding"}
        pooling, _, leaf = rest.partition("/embedding/")
        path = f"{tower}/{names.get(pooling, pooling)}/{leaf}"
    path = re.sub(r"/features/encoders/(\w+)/embedding/", r"/_embeddings/\1/", path)
    return path.replace("/features/encoders/", "/_embeddings/") \
        .replace("/projection/", "/_project/")[1:]


def transfer(model, old_vars: dict, old_vocabulary, new_vocabulary) -> dict:
    """Assigns `old_vars` ({object-graph path: variable or array}, as _variables() reads
    them) to `model`'s trainable variables at the same paths: a tagged table row by row
    through old_vocabulary(tag) / new_vocabulary(tag) (token lists; old_vocabulary may
    return None: copied as is when the shapes agree), anything else as it is when the
    shapes agree. An earlier export's variable is at the same path, or where the layout
    before trainer/towers.py had it. Returns counts of variables copied, remapped and left
    fresh."""
    tags = embedding.table_tags(model)
    counts = {"copied": 0, "remapped": 0, "fresh": 0}
    for path, var in _variables(model).items():
        if not var.trainable:
            continue  # users' histories and the like are rebuilt from the new data
        source = old_vars.get(path)
        if source is None:
            source = old_vars.get(_previous_layout(path))
        if source is None:
            counts["fresh"] += 1
            continue
        old_value = np.asarray(source.numpy() if hasattr(source, "numpy") else source)
        tag, reserved = tags.get(var.ref(), (None, 0))
        old_tokens = old_vocabulary(tag) if tag else None
        if old_tokens is not None and old_value.shape[1:] == var.shape[1:]:
            mapping = row_map(old_tokens, new_vocabulary(tag), reserved, int(var.shape[0]))
            mapping[mapping >= old_value.shape[0]] = -1
            value = var.numpy()
            hit = mapping >= 0
            value[hit] = old_value[mapping[hit]]
            var.assign(value)
            counts["remapped"] += 1
        elif tuple(old_value.shape) == tuple(var.shape):
            var.assign(old_value)
            counts["copied"] += 1
        else:
            counts["fresh"] += 1
    return counts


def warm_start(model, base_model_dir: str, tft_output) -> dict:
    """Copies `base_model_dir`'s weights into `model` (built); returns counts of variables
    copied as is, remapped through vocabularies, and left fresh."""
    from trainer import saved_model

    assets = os.path.join(base_model_dir, "assets")

    def old_vocabulary(tag):
        path = os.path.join(assets, F.VOCABS[tag])
        return _read_vocab(path) if tf.io.gfile.exists(path) else None

    counts = transfer(model, _variables(saved_model.load(base_model_dir)), old_vocabulary,
                      lambda tag: tft_output.vocabulary_by_name(F.VOCABS[tag]))
    logging.getLogger("movierec.trainer").info(
        "warm start from %s: %s", base_model_dir, counts)
    return counts
