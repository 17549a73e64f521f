"""The face dataset contract: its Unischema, the quarantine table's columns, and the dataset metadata."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from petastorm.codecs import CompressedImageCodec, NdarrayCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
from pyspark.sql.types import BooleanType, IntegerType, StringType, StructField, StructType

SCHEMA_VERSION = "1.0"
# Key of the JSON document (DatasetMetadata) in the Parquet _common_metadata of a face dataset.
METADATA_KEY = b"palsygan.dataset"
SPLITS = ("train", "val", "test")
NUM_LANDMARKS = 68


class FaceFields:
    """Field names of FaceSchema, so code names fields via the schema module, not string literals."""

    IMAGE = "image"
    LABELS = "labels"
    LABEL_INDEX = "label_index"
    SUBJECT = "subject"
    SOURCE_ID = "source_id"
    SPLIT = "split"
    LANDMARKS = "landmarks"
    CONTENT_HASH = "content_hash"
    AUGMENTED = "augmented"


def face_schema(image_size: int, num_labels: int) -> Unischema:
    """The Unischema of an aligned face dataset for one image size and label count."""
    f = FaceFields
    return Unischema("FaceSchema", [
        # Aligned face, RGB uint8, stored PNG-coded (lossless; no metadata chunks).
        UnischemaField(f.IMAGE, np.uint8, (image_size, image_size, 3), CompressedImageCodec("png"), False),
        # One-hot (expressions) or multi-hot (attribute sets) over DatasetMetadata.labels.
        UnischemaField(f.LABELS, np.float32, (num_labels,), NdarrayCodec(), False),
        # Index of the single label, -1 for multi-label rows: lets readers balance classes cheaply.
        UnischemaField(f.LABEL_INDEX, np.int32, (), ScalarCodec(IntegerType()), False),
        # Salted-hash pseudonyms of the person and of the source file.
        UnischemaField(f.SUBJECT, np.str_, (), ScalarCodec(StringType()), False),
        UnischemaField(f.SOURCE_ID, np.str_, (), ScalarCodec(StringType()), False),
        # train / val / test, by subject; also the Parquet partition column.
        UnischemaField(f.SPLIT, np.str_, (), ScalarCodec(StringType()), False),
        # The 68 dlib landmarks of the aligned face, (x, y) in aligned-image pixels.
        UnischemaField(f.LANDMARKS, np.float32, (NUM_LANDMARKS, 2), NdarrayCodec(), False),
        # sha256 of the decoded pixels of the source photo (dedupe key; shared by augmented copies).
        UnischemaField(f.CONTENT_HASH, np.str_, (), ScalarCodec(StringType()), False),
        # True for augmented copies made by the ETL (training split only).
        UnischemaField(f.AUGMENTED, np.bool_, (), ScalarCodec(BooleanType()), False),
    ])


# The quarantine table (plain Parquet): every input that did not reach the dataset, and why.
QUARANTINE_SPARK_SCHEMA = StructType([
    StructField("source_id", StringType(), False),  # pseudonym of the file, as in the dataset
    StructField("row", StringType(), False),         # where it came from, e.g. "legend.csv:17"
    StructField("stage", StringType(), False),       # source, decode, dedupe, face, label
    StructField("reason", StringType(), False),      # stable code, e.g. "truncated", "no_face"
    StructField("detail", StringType(), False),      # human-readable explanation
])


@dataclass(frozen=True)
class DatasetMetadata:
    """What readers need beyond the Unischema: label names, sizes and the schema version."""

    schema_version: str
    labels: tuple[str, ...]
    multi_label: bool
    image_size: int
    vocabulary: str
    split_seed: int
    counts: dict

    def to_json(self) -> str:
        """Serialise for the Parquet key-value metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "DatasetMetadata":
        """Parse and check the schema version."""
        data = json.loads(text)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"dataset schema version {data.get('schema_version')!r} is not the supported "
                             f"{SCHEMA_VERSION!r}; re-run the ingest job")
        data["labels"] = tuple(data["labels"])
        return cls(**data)
