"""Small ETL pieces: pseudonyms and salt, subject split, message scrubbing, the oversampling plan."""
import stat

import pytest
from pyspark.sql import Row

from etl.pipeline import IngestConfig, copy_plan, row_reference
from etl.pseudonym import load_or_create_salt, pseudonym, scrub
from etl.split import SplitConfig, assign_split


def test_pseudonyms_are_stable_salted_and_opaque():
    a = pseudonym("s009122d7", b"k" * 32, "p")
    assert a == pseudonym("s009122d7", b"k" * 32, "p")
    assert a != pseudonym("s009122d7", b"j" * 32, "p")
    assert a.startswith("p") and len(a) == 17 and "s009122d7" not in a


def test_salt_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "cfg" / "salt"
    salt = load_or_create_salt(path)
    assert len(salt) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_salt(path) == salt
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 32"):
        load_or_create_salt(path)


def test_split_is_deterministic_per_seed_and_near_the_fractions():
    subjects = [f"p{i:016x}" for i in range(4000)]
    config = SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=7)
    splits = [assign_split(s, config) for s in subjects]
    assert splits == [assign_split(s, config) for s in subjects]
    assert splits != [assign_split(s, SplitConfig(0.1, 0.2, seed=8)) for s in subjects]
    share = {name: splits.count(name) / len(splits) for name in ("train", "val", "test")}
    assert abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02
    with pytest.raises(ValueError):
        SplitConfig(val_fraction=0.6, test_fraction=0.5)


def test_scrub_and_row_reference_keep_file_names_out():
    assert scrub("'images/anna_smith.jpg' does not exist", "images/anna_smith.jpg", "f1") == "'f1' does not exist"
    assert scrub("anna_smith.jpg is truncated", "images/anna_smith.jpg", "f1") == "f1 is truncated"
    assert row_reference("legend.csv:17") == "legend.csv:17"
    assert row_reference("fer2013.csv#4") == "fer2013.csv#4"
    assert row_reference("happy/anna_smith.jpg") == ""


def test_oversampling_plan_tops_rare_labels_up_to_the_target(spark):
    rows = [Row(source_id=f"f{i:02d}", labels=["neutral"], split="train") for i in range(10)]
    rows += [Row(source_id=f"g{i}", labels=["contempt"], split="train") for i in range(3)]
    rows += [Row(source_id="h0", labels=["contempt"], split="test")]
    faces = spark.createDataFrame(rows)
    config = IngestConfig(output_url="file:///x", quarantine_url="file:///y", augment_copies=1, oversample_to=16)
    plan = {r.source_id: r.copies for r in copy_plan(faces, ("neutral", "contempt"), config).collect()}
    # neutral: 10 faces x (1 + 1 copy) = 20 >= 16, nothing extra.
    assert all(plan[f"f{i:02d}"] == 1 for i in range(10))
    # contempt: 3 faces x 2 = 6 rows; 10 more handed out round-robin (4, 3, 3 extra).
    assert sorted(plan[f"g{i}"] for i in range(3)) == [4, 4, 5]
    assert sum(1 + plan[f"g{i}"] for i in range(3)) == 16
    assert plan["h0"] == 0  # no copies outside the training split
