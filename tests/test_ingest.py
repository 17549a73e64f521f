"""The ingest job end to end: the bundled real sample, generated bad inputs, sharding and the report."""
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from petastorm import make_reader

from etl.face import FaceRejected, find_face
from etl.pipeline import IngestConfig, ingest
from etl.process import ProcessConfig
from etl.sources import scan_source
from etl.verify import read_metadata
from schemas.faces import SPLITS, FaceFields

from conftest import TEST_SALT as SALT


def _read_all(url, split=None, fields=None):
    filters = [(FaceFields.SPLIT, "=", split)] if split else None
    with make_reader(url, filters=filters, schema_fields=fields, num_epochs=1, workers_count=1) as reader:
        return list(reader)


def test_sample_counts_reconcile(sample_run, sample_dir):
    out, report, log = sample_run
    counts = report["counts"]
    assert counts["inputs"] == 222
    assert counts["written"] + counts["quarantined"] == 222
    assert counts["reconciled"] is True
    assert counts["written"] > 180  # the 350x350 photos all have a detectable face
    assert counts["rows_in_dataset"] == counts["written"] + counts["augmented_copies"]
    assert counts["augmented_copies"] == report["per_split"]["train"]  # one copy per training face
    quarantine = pq.read_table(out / "dataset_quarantine").to_pylist()
    assert len(quarantine) == counts["quarantined"]
    assert {f"{q['stage']}/{q['reason']}" for q in quarantine} == set(report["per_reason"])
    assert "reconciled" in log and "quarantined" in log


def test_sample_dataset_reads_back(sample_run):
    out, report, _ = sample_run
    url = (out / "dataset").as_uri()
    metadata = read_metadata(url)
    assert metadata.labels == tuple(report["labels"])
    assert metadata.labels[:2] == ("neutral", "happiness") and "contempt" in metadata.labels
    rows = _read_all(url)
    assert len(rows) == report["counts"]["rows_in_dataset"]
    for row in rows:
        assert row.image.shape == (64, 64, 3) and row.image.dtype == np.uint8
        assert row.labels.sum() == 1 and metadata.labels[row.label_index]
        assert row.landmarks.shape == (68, 2)
        # The aligned faces share a template: the eyes land near the same place in every crop.
        eyes = row.landmarks[36:48].mean(axis=0)
        assert 24 < eyes[0] < 40 and 18 < eyes[1] < 34, eyes
    originals = [r for r in rows if not r.augmented]
    assert len(originals) == report["counts"]["written"]
    assert {r.split for r in rows if r.augmented} == {"train"}


def test_no_subject_in_two_splits_and_pseudonyms_only(sample_run, sample_dir):
    out, _, _ = sample_run
    rows = _read_all((out / "dataset").as_uri(), fields=[FaceFields.SUBJECT, FaceFields.SPLIT, FaceFields.SOURCE_ID])
    splits_of = {}
    for row in rows:
        splits_of.setdefault(row.subject, set()).add(row.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert {next(iter(s)) for s in splits_of.values()} == set(SPLITS)
    # No real subject id or file name anywhere in the written bytes (dataset, quarantine, report).
    real_names = {p.stem.split("_")[0] for p in (sample_dir / "images").iterdir()} | {
        p.name for p in (sample_dir / "images").iterdir()}
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "salt")
    leaked = [name for name in real_names if name.encode() in blob]
    assert not leaked, leaked[:5]


def test_eight_readers_each_get_training_rows(sample_run):
    out, report, _ = sample_run
    url = (out / "dataset").as_uri()
    seen = []
    for shard in range(8):
        with make_reader(url, filters=[(FaceFields.SPLIT, "=", "train")], cur_shard=shard, shard_count=8,
                         schema_fields=[FaceFields.SOURCE_ID, FaceFields.AUGMENTED], num_epochs=1,
                         workers_count=1) as reader:
            seen.append([(r.source_id, bool(r.augmented)) for r in reader])
    assert all(seen), [len(s) for s in seen]
    flat = [x for s in seen for x in s]
    assert len(flat) == 2 * report["per_split"]["train"]


# Bad input, generated here


def _jpeg(rgb, **save_args):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92, **save_args)
    return buf.getvalue()


def _exif_with_gps():
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation
    exif[0x010F] = "SecretCam"  # camera make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS
    return exif


@pytest.fixture(scope="module")
def bad_source(tmp_path_factory, sample_dir):
    """A legend source mixing real faces with every kind of defect the ingest must quarantine."""
    root = tmp_path_factory.mktemp("bad") / "db"
    images = root / "images"
    images.mkdir(parents=True)
    faces = sorted((sample_dir / "images").glob("*.jpg"))
    good = [p for p in faces if Image.open(p).size == (350, 350) and _has_face(p)][:8]
    rows = []
    for i, path in enumerate(good[:5]):
        shutil.copy(path, images / f"good{i}.jpg")
        rows.append((f"good{i}.jpg", "Happy" if i % 2 else " NEUTRAL "))
    rgb = np.asarray(Image.open(good[5]).convert("RGB"))
    (images / "gps.jpg").write_bytes(_jpeg(rgb, exif=_exif_with_gps()))
    rows.append(("gps.jpg", "sadness"))
    (images / "copy_a.jpg").write_bytes((images / "good0.jpg").read_bytes())  # same photo, same label
    rows.append(("copy_a.jpg", "neutral"))
    buf = io.BytesIO()
    Image.open(good[1]).save(buf, "PNG")
    (images / "conflict.png").write_bytes(buf.getvalue())  # same pixels as good1, other label, other format
    rows.append(("conflict.png", "anger"))
    (images / "png_named.jpg").write_bytes(_png_of(good[6]))
    rows.append(("png_named.jpg", "surprise"))
    (images / "cmyk.jpg").write_bytes(_cmyk_jpeg(good[7]))
    rows.append(("cmyk.jpg", "surprise"))
    (images / "truncated.jpg").write_bytes(good[2].read_bytes()[:4000])
    rows.append(("truncated.jpg", "neutral"))
    (images / "text.jpg").write_text("not an image at all\n")
    rows.append(("text.jpg", "neutral"))
    (images / "empty.jpg").write_bytes(b"")
    rows.append(("empty.jpg", "neutral"))
    (images / "noise.png").write_bytes(_png_array(np.full((120, 120, 3), 127, np.uint8)))
    rows.append(("noise.png", "neutral"))
    bomb = Image.new("L", (9000, 9000))
    buf = io.BytesIO()
    bomb.save(buf, "PNG")
    (images / "bomb.png").write_bytes(buf.getvalue())
    rows.append(("bomb.png", "neutral"))
    (root.parent / "outside.jpg").write_bytes(good[0].read_bytes())
    rows += [("../../outside.jpg", "neutral"), ("/etc/passwd", "neutral"), ("missing.jpg", "neutral"),
             ("good2.jpg", "smirk"), ("good3.jpg", "Happy")]  # last: repeats the row of good3 exactly
    lines = [" User.ID , IMAGE ,Emotion "] + [f"u1,{name},{label}" for name, label in rows]
    (root / "legend.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    return root


def _has_face(path):
    try:
        find_face(np.asarray(Image.open(path).convert("RGB")))
    except FaceRejected:
        return False
    return True


def _png_array(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _png_of(path):
    return _png_array(np.asarray(Image.open(path).convert("RGB")))


def _cmyk_jpeg(path):
    buf = io.BytesIO()
    Image.open(path).convert("RGB").convert("CMYK").save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_run(spark, bad_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out")
    scan = scan_source(f"legend:{bad_source}")
    config = IngestConfig(output_url=(out / "ds").as_uri(), quarantine_url=(out / "q").as_uri(),
                          process=ProcessConfig(size=64), min_row_groups=2,
                          augment_copies=0)
    report = ingest(spark, scan, SALT, config)
    return out, report, scan


def test_bad_inputs_are_quarantined_with_reasons(bad_run):
    out, report, scan = bad_run
    quarantine = pq.read_table(out / "q").to_pylist()
    reasons = sorted(f"{q['stage']}/{q['reason']}" for q in quarantine)
    assert reasons == sorted([
        "source/path_outside_root", "source/path_outside_root", "source/missing_file", "source/unknown_label",
        "source/duplicate_row",
        "decode/truncated", "decode/not_an_image", "decode/empty_file", "decode/too_many_pixels",
        "face/no_face",
        "dedupe/duplicate", "dedupe/label_conflict", "dedupe/label_conflict",
    ]), reasons
    counts = report["counts"]
    assert counts["inputs"] == 20 == counts["written"] + counts["quarantined"]
    assert counts["written"] == 20 - 13
    assert counts["duplicates_merged"] == 1
    # Every quarantine row names its row in the legend and carries no real file name.
    assert all(q["row"].startswith("legend.csv:") for q in quarantine)
    assert not any("outside.jpg" in q["detail"] or "truncated.jpg" in q["detail"] for q in quarantine)


def test_good_inputs_decode_to_rgb_without_metadata(bad_run):
    out, report, _ = bad_run
    rows = _read_all((out / "ds").as_uri())
    assert len(rows) == report["counts"]["written"] == 7
    # good0..4 except good1 (label conflict), plus gps, png_named, cmyk: colour variants all decoded.
    labels = sorted(read_metadata((out / "ds").as_uri()).labels)
    assert labels == ["happiness", "neutral", "sadness", "surprise"]
    blob = b"".join(p.read_bytes() for p in (out / "ds").rglob("*.parquet"))
    assert b"SecretCam" not in blob and b"Exif" not in blob


def test_missing_source_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "jobs/ingest.py", "--source", f"legend:{tmp_path / 'nowhere'}", "--output",
         str(tmp_path / "ds")], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "cannot ingest" in proc.stderr


def test_fer2013_inline_pixels_through_the_pipeline(spark, sample_dir, tmp_path):
    """FER2013 rows carry their pixels inline; tiny 48x48 faces use the whole-image face policy."""
    from etl.face import FacePolicy

    faces = [p for p in sorted((sample_dir / "images").glob("*.jpg"))
             if Image.open(p).size == (350, 350)][:6]
    lines = ["emotion,pixels,Usage"]
    for i, path in enumerate(faces):
        grey = np.asarray(Image.open(path).convert("L").crop((75, 75, 275, 275)).resize((48, 48)))
        lines.append(f"{i % 7},{' '.join(str(v) for v in grey.reshape(-1))},Training")
    lines.append("3,1 2 3,Training")  # malformed pixel string
    root = tmp_path / "fer"
    root.mkdir()
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n")
    scan = scan_source(f"fer2013:{root}")
    config = IngestConfig(output_url=(tmp_path / "ds").as_uri(), quarantine_url=(tmp_path / "q").as_uri(),
                          process=ProcessConfig(size=64, policy=FacePolicy(on_none="whole_image")),
                          min_row_groups=2, augment_copies=0)
    report = ingest(spark, scan, SALT, config)
    assert report["counts"]["inputs"] == 7
    assert report["counts"]["reconciled"] is True
    assert report["per_reason"].get("source/malformed_row") == 1
    assert report["counts"]["written"] == 6 - sum(v for k, v in report["per_reason"].items() if k.startswith("face/"))
    assert report["counts"]["written"] >= 4
    rows = _read_all((tmp_path / "ds").as_uri())
    assert all(r.image.shape == (64, 64, 3) for r in rows)
