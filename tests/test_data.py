"""The training stream over the ingested bundled sample: batches, shards, class balance, shuffling."""
from __future__ import annotations

import collections
import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from etl.verify import read_metadata
from schemas.faces import FaceFields
from training.data import DataConfig, _ShuffleBuffer, open_rows, open_stream, to_model_input

KEY_FIELDS = (FaceFields.SOURCE_ID, FaceFields.AUGMENTED, FaceFields.LABEL_INDEX)


@pytest.fixture(scope="module")
def dataset(sample_run):
    out, _, _ = sample_run
    url = (out / "dataset").as_uri()
    return url, read_metadata(url), out / "dataset"


def _train_keys(path) -> collections.Counter:
    table = pq.read_table(path / "split=train", columns=[FaceFields.SOURCE_ID, FaceFields.AUGMENTED])
    return collections.Counter(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))


def _key(row) -> tuple[str, bool]:
    return str(row[FaceFields.SOURCE_ID]), bool(row[FaceFields.AUGMENTED])


@pytest.mark.parametrize("image_size", [64, 32])
def test_batches_are_model_input_with_the_datasets_labels(dataset, image_size):
    url, metadata, _ = dataset
    stream = open_stream(DataConfig(dataset_url=url, batch_size=8), image_size, rank=0, world_size=1)
    try:
        for batch in itertools.islice(stream, 3):
            assert batch.x.shape == (8, 3, image_size, image_size) and batch.x.dtype.is_floating_point
            assert batch.x.is_contiguous()
            assert -1.0 <= float(batch.x.min()) < float(batch.x.max()) <= 1.0
            assert batch.c.shape == (8, len(metadata.labels))
            assert set(np.unique(batch.c.numpy())) <= {0.0, 1.0} and (batch.c.sum(1) == 1).all()
    finally:
        stream.close()


def test_model_input_is_contiguous_nchw_in_minus_one_to_one():
    # A permuted NHWC view would carry the channels-last layout into every convolution (slower on CPU).
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 255, 51)
    x = to_model_input(images, 16)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, -0.6])
    assert to_model_input(images, 8).is_contiguous()  # downscaled too


def test_rows_decode_to_the_stored_faces(dataset):
    url, metadata, path = dataset
    rows = open_rows(DataConfig(dataset_url=url, shuffle_buffer=0), 0, 1, fields=(FaceFields.IMAGE, FaceFields.LABELS,
                                                                                    FaceFields.LABEL_INDEX))
    try:
        for row in itertools.islice(rows, 20):
            assert row[FaceFields.IMAGE].shape == (metadata.image_size, metadata.image_size, 3)
            assert row[FaceFields.IMAGE].dtype == np.uint8 and row[FaceFields.IMAGE].std() > 5
            assert row[FaceFields.LABELS].dtype == np.float32
            assert int(np.argmax(row[FaceFields.LABELS])) == int(row[FaceFields.LABEL_INDEX])
    finally:
        rows.close()


def test_two_shards_are_disjoint_and_together_cover_the_split(dataset):
    url, _, path = dataset
    expected = _train_keys(path)
    assert max(expected.values()) == 1, "(source id, augmented) should name one training row"
    seen = []
    for rank in (0, 1):
        config = DataConfig(dataset_url=url, shuffle_buffer=16)
        rows = open_rows(config, rank, 2, fields=KEY_FIELDS)
        try:
            # Two passes over the whole split are more than one pass over either shard.
            seen.append({_key(row) for row in itertools.islice(rows, 2 * len(expected) + 16)})
        finally:
            rows.close()
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(expected)


def test_class_balance_evens_out_the_labels(dataset):
    url, metadata, path = dataset
    shares = {}
    for balance in (False, True):
        rows = open_rows(DataConfig(dataset_url=url, balance_classes=balance, shuffle_buffer=16), 0, 1,
                         fields=KEY_FIELDS)
        try:
            counts = collections.Counter(int(row[FaceFields.LABEL_INDEX]) for row in itertools.islice(rows, 600))
        finally:
            rows.close()
        shares[balance] = {label: n / 600 for label, n in counts.items()}
    present = [i for i, n in enumerate(metadata.counts["rows_per_split_label"]["train"].get(label, 0)
                                       for label in metadata.labels) if n]
    assert len(present) >= 3
    # Unbalanced, the majority label dominates; balanced, every present label gets about 1/len(present).
    assert max(shares[False].values()) > 1.5 / len(present)
    assert set(shares[True]) == set(present)
    assert max(shares[True].values()) < 1.6 / len(present)
    assert min(shares[True].values()) > 0.5 / len(present)


def test_shuffle_buffer_releases_every_row_once_in_a_new_order():
    buffer = _ShuffleBuffer(8, np.random.default_rng(0))
    released = [r for r in (buffer.push(i) for i in range(100)) if r is not None] + buffer.rows
    assert sorted(released) == list(range(100)) and released != list(range(100))
    assert _ShuffleBuffer(0, np.random.default_rng(0)).push("row") == "row"
