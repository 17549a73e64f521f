"""A Spark local session writes a Petastorm dataset; petastorm's PyTorch DataLoader reads it back exactly."""
import numpy as np
import pytest
from petastorm import make_reader
from petastorm.codecs import CompressedImageCodec, NdarrayCodec
from petastorm.etl.dataset_metadata import materialize_dataset
from petastorm.pytorch import DataLoader
from petastorm.unischema import Unischema, UnischemaField, dict_to_spark_row
from pyspark.sql.types import IntegerType

ROWS = 20
SIZE = 16

RoundTripSchema = Unischema("RoundTripSchema", [
    UnischemaField("idx", np.int32, (), None, False),
    UnischemaField("image", np.uint8, (SIZE, SIZE, 3), CompressedImageCodec("png"), False),
    UnischemaField("label", np.float32, (4,), NdarrayCodec(), False),
])


def _row(i):
    rng = np.random.default_rng(i)
    label = np.zeros(4, np.float32)
    label[i % 4] = 1.0
    return {"idx": np.int32(i), "image": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "label": label}


@pytest.fixture(scope="module")
def dataset_url(spark, tmp_path_factory):
    url = tmp_path_factory.mktemp("petastorm").joinpath("ds").as_uri()
    # Two row groups per file and 4 files: enough row groups for 2 readers to each get some.
    with materialize_dataset(spark, url, RoundTripSchema, row_group_size_mb=1):
        rdd = spark.sparkContext.parallelize(range(ROWS), 4).map(_row).map(
            lambda r: dict_to_spark_row(RoundTripSchema, r))
        spark.createDataFrame(rdd, RoundTripSchema.as_spark_schema()).coalesce(4).write.parquet(url)
    return url


def test_dataloader_reads_back_exact_values(dataset_url):
    with DataLoader(make_reader(dataset_url, num_epochs=1, workers_count=1, shuffle_row_groups=False),
                    batch_size=5) as loader:
        seen = {}
        for batch in loader:
            for i, image, label in zip(batch["idx"].tolist(), batch["image"], batch["label"]):
                seen[i] = (image.numpy(), label.numpy())
    assert sorted(seen) == list(range(ROWS))
    for i, (image, label) in seen.items():
        expected = _row(i)
        np.testing.assert_array_equal(image, expected["image"])
        np.testing.assert_array_equal(label, expected["label"])


def test_two_shards_are_disjoint_halves(dataset_url):
    shards = []
    for shard in range(2):
        with make_reader(dataset_url, num_epochs=1, workers_count=1, cur_shard=shard, shard_count=2,
                         schema_fields=["idx"]) as reader:
            shards.append({int(row.idx) for row in reader})
    assert shards[0] and shards[1]
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(range(ROWS))
    assert len(shards[0]) == len(shards[1]) == ROWS // 2
