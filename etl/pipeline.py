"""Spark glue of the ingest job: extract source records, transform them into faces, load a Petastorm dataset.

The SparkSession is created by jobs/ingest.py and passed in. Every input ends up either written to the
dataset or in the quarantine table, and ``reconcile`` checks the counts add up.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from petastorm.etl.dataset_metadata import materialize_dataset
from petastorm.unischema import dict_to_spark_row
from pyspark import RDD
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, BooleanType, StringType, StructField, StructType
from pyspark.storagelevel import StorageLevel

from etl.augment import AugmentConfig, augment
from etl.decode import decode_png
from etl.process import STAGES, ProcessConfig, process_partition
from etl.pseudonym import pseudonym, scrub
from etl.sources import SourceScan
from etl.split import SplitConfig, assign_split
from etl.verify import verify_dataset, write_metadata
from schemas.faces import QUARANTINE_SPARK_SCHEMA, SCHEMA_VERSION, SPLITS, DatasetMetadata, FaceFields, face_schema
from schemas.vocabulary import Vocabulary

log = logging.getLogger(__name__)

_PROCESSED_SCHEMA = StructType([
    StructField("source_id", StringType(), False),
    StructField("row", StringType(), False),
    StructField("subject", StringType(), False),
    StructField("labels", ArrayType(StringType()), False),
    StructField("ok", BooleanType(), False),
    StructField("stage", StringType(), True),
    StructField("reason", StringType(), True),
    StructField("detail", StringType(), True),
    StructField("content_hash", StringType(), True),
    StructField("image_png", BinaryType(), True),
    StructField("landmarks", BinaryType(), True),
])

# Tasks per core for the per-image work: few enough that task overhead stays small, enough to balance.
SLICES_PER_CORE = 2
# ...and at most about this many images per task, for progress and balance on large sources.
RECORDS_PER_TASK = 256
_ROW_REFERENCE = re.compile(r"^[\w.\-]+(:\d+|#\d+)$")


@dataclass(frozen=True)
class IngestConfig:
    """Everything the ingest transform needs, built once by jobs/ingest.py."""

    output_url: str
    quarantine_url: str
    process: ProcessConfig = ProcessConfig()
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    augment_copies: int = 1
    oversample_to: int = 0
    labels: tuple[str, ...] | None = None
    min_row_groups: int = 16
    rows_per_file: int = 400
    augment_seed: int = 0
    verify_rows: int = 64

    def __post_init__(self):
        if self.augment_copies < 0 or self.oversample_to < 0:
            raise ValueError("augment_copies and oversample_to must be >= 0")


@dataclass
class StageTimer:
    """Wall seconds per driver-side phase of the job, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn, *args, **kwargs):
        """Call fn and record its wall time under name."""
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def row_reference(where: str) -> str:
    """The row part of a source location ("legend.csv:17", "fer2013.csv#4"), or "" for a bare file path."""
    return where if _ROW_REFERENCE.match(where) else ""


# Extract


def extract(spark: SparkSession, scan: SourceScan, salt: bytes) -> tuple[RDD, DataFrame, dict[str, str]]:
    """Records as an RDD of (file pseudonym, subject pseudonym, SourceRecord), source problems as a
    DataFrame, and pseudonym -> real name for logs. Real paths stay inside the job: outputs carry
    pseudonyms only."""
    names: dict[str, str] = {}
    records = []
    for record in scan.records:
        source_id = pseudonym(record.path, salt, "f")
        names[source_id] = f"{record.row} ({record.path})" if record.row != record.path else record.path
        records.append((source_id, pseudonym(record.subject, salt, "p"), record))
    problems = []
    for problem in scan.problems:
        name = problem.path or problem.where
        source_id = pseudonym(name, salt, "f")
        names[source_id] = problem.where if problem.path is None else f"{problem.where} ({problem.path})"
        problems.append((source_id, row_reference(problem.where), "source", problem.reason,
                         scrub(problem.detail, name, source_id)))
    wanted = max(spark.sparkContext.defaultParallelism * SLICES_PER_CORE, -(-len(records) // RECORDS_PER_TASK))
    slices = max(2, min(len(records) // 8 + 1, wanted))
    # An RDD, not a DataFrame: the records go straight to the Python workers that process them.
    records_rdd = spark.sparkContext.parallelize(records, slices)
    problems_df = spark.createDataFrame(problems, QUARANTINE_SPARK_SCHEMA)
    return records_rdd, problems_df, names


# Transform


def process(spark: SparkSession, records: RDD, root: str, config: ProcessConfig) -> tuple[RDD, dict[str, float]]:
    """Decode, hash, detect and align every record on the executors: the result tuples, persisted, and
    executor seconds per stage."""
    sc = spark.sparkContext
    seconds = {stage: sc.accumulator(0.0) for stage in STAGES}
    processed = records.mapPartitions(lambda items: process_partition(items, root, config, seconds))
    processed = processed.persist(StorageLevel.MEMORY_AND_DISK)
    processed.count()  # the expensive pass happens once, here, under Spark's progress bar
    return processed, {stage: acc.value for stage, acc in seconds.items()}


def as_frame(spark: SparkSession, processed: RDD) -> DataFrame:
    """The processed tuples as a persisted DataFrame; the RDD's cached copy is released."""
    # The tuples are built by process_partition to this schema: no per-row verification pass needed.
    frame = spark.createDataFrame(processed, _PROCESSED_SCHEMA, verifySchema=False)
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    frame.count()
    processed.unpersist()
    return frame


def dedupe(faces: DataFrame) -> tuple[DataFrame, DataFrame]:
    """One row per distinct photo (by pixel hash); copies go to quarantine, all of them if labels conflict."""
    by_photo = Window.partitionBy("content_hash")
    label_key = F.array_join(F.array_sort("labels"), "|")
    annotated = (faces
                 .withColumn("_copies", F.count("*").over(by_photo))
                 .withColumn("_label_sets", F.size(F.collect_set(label_key).over(by_photo)))
                 .withColumn("_keeper", F.min("source_id").over(by_photo)))
    conflict = F.col("_label_sets") > 1
    duplicate = ~conflict & (F.col("source_id") != F.col("_keeper"))
    quarantined = annotated.filter(conflict | duplicate).select(
        "source_id", "row", F.lit("dedupe").alias("stage"),
        F.when(conflict, F.lit("label_conflict")).otherwise(F.lit("duplicate")).alias("reason"),
        F.when(conflict, F.concat(F.lit("the same photo appears "), F.col("_copies").cast("string"),
                                  F.lit(" times with different labels; all copies left out")))
        .otherwise(F.concat(F.lit("the same photo as "), F.col("_keeper"), F.lit(", which is kept")))
        .alias("detail"))
    kept = annotated.filter(~conflict & ~duplicate).drop("_copies", "_label_sets", "_keeper")
    return kept, quarantined


def choose_labels(kept: DataFrame, vocabulary: Vocabulary, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The dataset's labels: those present in the kept faces (vocabulary order), limited to ``requested``."""
    present = {r.label for r in kept.select(F.explode("labels").alias("label")).distinct().collect()}
    if requested is not None:
        canonical = tuple(vocabulary.canonical(label) for label in requested)
        absent = sorted(set(canonical) - present)
        if absent:
            log.warning("requested labels with no face in the data: %s", ", ".join(absent))
        present &= set(canonical)
    labels = tuple(label for label in vocabulary.labels if label in present)
    if not labels:
        raise ValueError("no face with a selected label survived ingest: nothing to write")
    return labels


def select_labels(kept: DataFrame, labels: tuple[str, ...], multi_label: bool) -> tuple[DataFrame, DataFrame]:
    """Faces whose labels are all selected; the rest to quarantine (reason label_not_selected)."""
    allowed = F.array(*[F.lit(label) for label in labels])
    unselected = F.size(F.array_except("labels", allowed)) > 0
    if multi_label:
        # Attribute sets: unselected attributes are dropped from the vector, the face is kept.
        return kept.withColumn("labels", F.array_intersect("labels", allowed)), kept.limit(0).select(
            "source_id", "row", F.lit("label").alias("stage"), F.lit("label_not_selected").alias("reason"),
            F.lit("").alias("detail"))
    quarantined = kept.filter(unselected).select(
        "source_id", "row", F.lit("label").alias("stage"), F.lit("label_not_selected").alias("reason"),
        F.concat(F.lit("label "), F.array_join("labels", ","), F.lit(" is not among the selected labels"))
        .alias("detail"))
    return kept.filter(~unselected), quarantined


def with_splits(faces: DataFrame, split: SplitConfig) -> DataFrame:
    """Add the split column: a deterministic function of (seed, subject pseudonym)."""
    assign = F.udf(lambda subject: assign_split(subject, split), StringType(), useArrow=False)
    return faces.withColumn(FaceFields.SPLIT, assign("subject"))


def copy_plan(faces: DataFrame, labels: tuple[str, ...], config: IngestConfig) -> DataFrame:
    """Add ``copies``: augmented copies per training face (plus oversampling of rare labels up to a target)."""
    train = F.col(FaceFields.SPLIT) == SPLITS[0]
    planned = faces.withColumn("copies", F.when(train, F.lit(config.augment_copies)).otherwise(F.lit(0)))
    if not config.oversample_to:
        return planned
    # Rank each training face within its label, then hand the missing rows out round-robin.
    label = F.col("labels")[0]
    by_label = Window.partitionBy(label).orderBy("source_id")
    counts = {r["label"]: r["count"] for r in
              faces.filter(train).groupBy(label.alias("label")).count().collect()}
    missing = {name: max(0, config.oversample_to - n * (1 + config.augment_copies)) for name, n in counts.items()}
    extra = F.lit(0)
    for name, n in counts.items():
        per_face, remainder = divmod(missing[name], n)
        extra = F.when(label == name, F.lit(per_face) + (F.col("_rank") <= remainder).cast("int")).otherwise(extra)
    return (planned.withColumn("_rank", F.row_number().over(by_label))
            .withColumn("copies", F.col("copies") + F.when(train, extra).otherwise(F.lit(0)))
            .drop("_rank"))


def _face_rows(row, labels: tuple[str, ...], multi_label: bool, schema, config: IngestConfig):
    """The original face and its augmented copies, as Spark rows of the Unischema."""
    image = decode_png(row.image_png)
    landmarks = np.frombuffer(row.landmarks, np.float32).reshape(-1, 2)
    vector = np.zeros(len(labels), np.float32)
    for label in row.labels:
        vector[labels.index(label)] = 1.0
    label_index = -1 if multi_label else labels.index(row.labels[0])
    base = {
        FaceFields.LABELS: vector, FaceFields.LABEL_INDEX: np.int32(label_index),
        FaceFields.SUBJECT: row.subject, FaceFields.SOURCE_ID: row.source_id, FaceFields.SPLIT: row.split,
        FaceFields.CONTENT_HASH: row.content_hash,
    }
    yield dict_to_spark_row(schema, {**base, FaceFields.IMAGE: image, FaceFields.LANDMARKS: landmarks,
                                     FaceFields.AUGMENTED: False})
    for copy in range(row.copies):
        rng = np.random.default_rng([config.augment_seed, int(row.content_hash[:15], 16), copy])
        new_image, new_landmarks = augment(image, landmarks, rng, config.augment)
        yield dict_to_spark_row(schema, {**base, FaceFields.IMAGE: np.ascontiguousarray(new_image),
                                         FaceFields.LANDMARKS: new_landmarks.astype(np.float32),
                                         FaceFields.AUGMENTED: True})


# Load


def write_dataset(spark: SparkSession, faces: DataFrame, labels: tuple[str, ...], multi_label: bool,
                  config: IngestConfig, expected_rows: int) -> None:
    """Write the faces and their augmented copies as a Petastorm dataset partitioned by split."""
    schema = face_schema(config.process.size, len(labels))
    rows = faces.rdd.flatMap(lambda row: _face_rows(row, labels, multi_label, schema, config))
    # Every split partition directory gets one file per Spark partition: at least min_row_groups files,
    # so that many readers (shards) of the training split each get row groups.
    partitions = max(config.min_row_groups, -(-expected_rows // config.rows_per_file))
    with materialize_dataset(spark, config.output_url, schema, row_group_size_mb=32):
        (spark.createDataFrame(rows, schema.as_spark_schema())
         .repartition(partitions)
         .write.mode("overwrite").partitionBy(FaceFields.SPLIT).parquet(config.output_url))


def write_quarantine(quarantine: DataFrame, url: str) -> None:
    """Write the quarantine table as one small Parquet dataset."""
    quarantine.coalesce(1).write.mode("overwrite").parquet(url)


def counts_by(df: DataFrame, *columns: str) -> dict:
    """Row counts keyed by the "/"-joined values of ``columns``."""
    return {"/".join(str(v) for v in r[:-1]): r[-1] for r in df.groupBy(*columns).count().collect()}


def ingest(spark: SparkSession, scan: SourceScan, salt: bytes, config: IngestConfig) -> dict:
    """Run the whole transform and load; returns the report (counts, label/reason tables, timings)."""
    timer = StageTimer()
    vocabulary = scan.vocabulary
    records, problems, names = timer.run("extract", extract, spark, scan, salt)
    inputs = len(scan.records) + len(scan.problems)
    log.info("%d inputs: %d records, %d source problems", inputs, len(scan.records), len(scan.problems))

    processed, cpu_seconds = timer.run("process", process, spark, records, scan.root, config.process)
    processed = timer.run("to_frame", as_frame, spark, processed)
    rejected = processed.filter(~F.col("ok")).select("source_id", "row", "stage", "reason", "detail")

    def transform():
        kept, duplicates = dedupe(processed.filter("ok"))
        labels = choose_labels(kept, vocabulary, config.labels)
        kept, unselected = select_labels(kept, labels, vocabulary.multi_label)
        planned = copy_plan(with_splits(kept, config.split), labels, config)
        planned = planned.persist(StorageLevel.MEMORY_AND_DISK)
        return planned, labels, duplicates, unselected

    planned, labels, duplicates, unselected = timer.run("dedupe_split", transform)
    quarantine = problems.unionByName(rejected).unionByName(duplicates).unionByName(unselected)
    quarantine = quarantine.persist(StorageLevel.MEMORY_AND_DISK)

    rows_per_split_label = {
        f"{r[FaceFields.SPLIT]}/{r['label']}": int(r["rows"]) for r in
        planned.select(FaceFields.SPLIT, "copies", F.explode("labels").alias("label"))
        .groupBy(FaceFields.SPLIT, "label").agg(F.sum(F.col("copies") + 1).alias("rows")).collect()}
    copies = planned.agg(F.sum("copies")).first()[0] or 0
    originals = planned.count()
    timer.run("augment_write", write_dataset, spark, planned, labels, vocabulary.multi_label, config,
              originals + copies)
    timer.run("quarantine_write", write_quarantine, quarantine, config.quarantine_url)

    per_reason = counts_by(quarantine, "stage", "reason")
    quarantined = sum(per_reason.values())
    duplicates_merged = per_reason.get("dedupe/duplicate", 0)
    per_split = counts_by(planned, FaceFields.SPLIT)
    metadata = DatasetMetadata(
        schema_version=SCHEMA_VERSION, labels=labels, multi_label=vocabulary.multi_label,
        image_size=config.process.size, vocabulary=vocabulary.name, split_seed=config.split.seed,
        counts={"originals": per_split, "augmented": int(copies),
                "rows_per_split_label": _nest(rows_per_split_label)})
    write_metadata(config.output_url, metadata)
    checked = timer.run("verify", verify_dataset, config.output_url, metadata, originals + copies,
                        config.verify_rows, config.min_row_groups)

    _log_quarantine(quarantine, names)
    processed.unpersist()
    planned.unpersist()
    report = {
        "schema_version": SCHEMA_VERSION,
        "output": config.output_url,
        "quarantine": config.quarantine_url,
        "labels": list(labels),
        "counts": {
            "inputs": inputs,
            "written": originals,
            "quarantined": quarantined,
            "duplicates_merged": duplicates_merged,
            "augmented_copies": int(copies),
            "rows_in_dataset": originals + int(copies),
            "reconciled": inputs == originals + quarantined,
        },
        "per_split": per_split,
        "rows_per_split_label": rows_per_split_label,
        "per_reason": per_reason,
        "verified": checked,
        "seconds": {"wall": timer.seconds, "executor_cpu": cpu_seconds},
        "images_per_second": {
            "process": len(scan.records) / timer.seconds["process"] if timer.seconds["process"] else None,
            "overall": inputs / sum(timer.seconds.values()),
        },
        "config": _config_summary(config),
    }
    quarantine.unpersist()
    if not report["counts"]["reconciled"]:
        raise RuntimeError(f"counts do not reconcile: {inputs} inputs != {originals} written + "
                           f"{quarantined} quarantined")
    return report


def _nest(flat: dict[str, int]) -> dict[str, dict[str, int]]:
    """{"train/anger": 3} -> {"train": {"anger": 3}}."""
    nested: dict[str, dict[str, int]] = {}
    for key, value in flat.items():
        outer, inner = key.split("/", 1)
        nested.setdefault(outer, {})[inner] = value
    return nested


def _log_quarantine(quarantine: DataFrame, names: dict[str, str], limit: int = 25) -> None:
    """Log quarantined inputs by their real names (console only; outputs keep pseudonyms)."""
    rows = quarantine.orderBy("stage", "reason", "source_id").limit(limit + 1).collect()
    for row in rows[:limit]:
        log.warning("quarantined %s: %s/%s: %s", names.get(row.source_id, row.source_id), row.stage, row.reason,
                    row.detail)
    if len(rows) > limit:
        log.warning("... more quarantined inputs: see the quarantine table")


def _config_summary(config: IngestConfig) -> dict:
    """The config as plain JSON-able values."""
    summary = asdict(config)
    summary["process"]["policy"] = {k: getattr(v, "value", v) for k, v in summary["process"]["policy"].items()}
    return summary
