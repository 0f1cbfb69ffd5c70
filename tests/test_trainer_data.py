"""The Trainer's input goes through tf.io.gfile: artifact URIs on a file system other than
the local one (gs://, s3://; here TensorFlow's in-memory ram://) read as local paths do."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from trainer import data
from trainer import features as F


@pytest.fixture(scope="module")
def ram_examples(example_files):
    """The train and catalog splits copied to ram://, laid out as an Examples artifact."""
    root = "ram://examples"
    for split in (F.TRAIN_SPLIT, F.CATALOG_SPLIT):
        tf.io.gfile.makedirs(f"{root}/Split-{split}")
        tf.io.gfile.copy(example_files[split], f"{root}/Split-{split}/data_tfrecord-0.gz",
                         overwrite=True)
    return root


def test_tfrecord_files_finds_directories_and_globs_on_any_file_system(ram_examples):
    train = f"{ram_examples}/Split-{F.TRAIN_SPLIT}"
    assert data.tfrecord_files(train) == [f"{train}/data_tfrecord-0.gz"]
    assert data.tfrecord_files(f"{train}/*.gz") == [f"{train}/data_tfrecord-0.gz"]
    assert data.split_dir(train, F.CATALOG_SPLIT) == f"{ram_examples}/Split-{F.CATALOG_SPLIT}"
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        data.tfrecord_files(f"{ram_examples}/Split-nothing")


def test_ratings_and_catalog_read_from_ram_as_from_disk(ram_examples, example_files,
                                                        transform_dir):
    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()
    local, local_users = data.load_ratings([example_files[F.TRAIN_SPLIT]], layer)
    remote, remote_users = data.load_ratings(
        data.tfrecord_files(f"{ram_examples}/Split-{F.TRAIN_SPLIT}"), layer)
    assert len(remote) == len(local) > 0 and remote_users == local_users
    for key in local.rows:
        np.testing.assert_array_equal(remote[key], local[key])
    catalog, ids = data.load_catalog(
        data.tfrecord_files(data.split_dir(f"{ram_examples}/Split-{F.TRAIN_SPLIT}",
                                           F.CATALOG_SPLIT)), layer)
    np.testing.assert_array_equal(ids, data.load_catalog([example_files[F.CATALOG_SPLIT]],
                                                         layer)[1])
    assert len(catalog[F.MOVIE_ID]) == len(ids)
