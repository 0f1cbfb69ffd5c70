"""The committed curated schemas are the generator's output and cover every raw feature."""


import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from components.movielens_example_gen import movielens
from pipeline.schemas import generate
from trainer import features as F


@pytest.mark.parametrize("layout", movielens.LAYOUTS)
def test_committed_schema_is_up_to_date(layout):
    committed = (generate.HERE / f"{layout}.pbtxt").read_text()
    assert committed == generate.render(layout), (
        "run `python -m pipeline.schemas.generate` and review the diff")


@pytest.mark.parametrize("layout", movielens.LAYOUTS)
def test_schema_declares_every_raw_feature_and_the_rating_range(layout):
    schema = text_format.Parse((generate.HERE / f"{layout}.pbtxt").read_text(),
                               schema_pb2.Schema())
    features = {f.name: f for f in schema.feature}
    assert set(features) == set(F.names(F.RATING_EXAMPLE_FEATURES + F.HISTORY_FEATURES))
    low, high = movielens.RATING_RANGE[layout]
    for rating in (F.RATING, F.HISTORY_RATINGS):
        assert (features[rating].float_domain.min, features[rating].float_domain.max) == (
            low, high)
    # the request context (a time split's eval examples) is optional: absent from train
    for name in F.names(F.HISTORY_FEATURES):
        assert features[name].presence.min_fraction == 0 and features[name].value_count.min == 0
