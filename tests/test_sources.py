"""Source-layout readers: every row becomes a record or a problem; nothing is read outside the root."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest

from etl.decode import decode_image, encode_png
from etl.sources import (
    FER2013_LABELS,
    LAYOUTS,
    PROBLEM_REASONS,
    SourceError,
    SourceProblem,
    SourceRecord,
    read_record_bytes,
    scan_celeba,
    scan_fer2013,
    scan_folders,
    scan_legend,
    scan_pattern,
    scan_source,
)
from schemas.vocabulary import EXPRESSIONS, Vocabulary

PNG = encode_png(np.full((4, 4, 3), 128, np.uint8))


def touch(path: Path, data: bytes = PNG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def legend_source(tmp_path: Path, text: str, images=("s01_1.jpg", "s01_2.jpg", "s02_1.jpg"),
                  newline: str = "\n", bom: bool = False) -> Path:
    root = tmp_path / "src"
    for name in images:
        touch(root / "images" / name)
    data = text.replace("\n", newline).encode("utf-8")
    (root / "legend.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return root


def reasons(scan) -> list[tuple[str, str]]:
    return [(p.where, p.reason) for p in scan.problems]


# ---------------------------------------------------------------- the bundled real sample


def test_bundled_sample_through_the_legend_layout(sample_dir):
    scan = scan_source(f"legend:{sample_dir}")
    assert len(scan.records) == 222
    assert scan.problems == []
    with open(sample_dir / "legend.csv", newline="", encoding="utf-8") as handle:
        raw = {row["image"]: row["emotion"] for row in csv.DictReader(handle)}
    assert {"ANGER", "anger", "HAPPINESS", "happiness"} <= set(raw.values())  # mixed case input
    paths = set()
    for record in scan.records:
        name = record.path.removeprefix("images/")
        assert record.path == f"images/{name}"
        assert (sample_dir / record.path).is_file()
        assert record.subject == name.split("_")[0]
        assert record.subject.startswith("s") and len(record.subject) == 9
        assert record.labels == (raw[name].lower(),)
        assert record.labels[0] in EXPRESSIONS
        assert record.row.startswith("legend.csv:")
        assert record.data is None
        paths.add(record.path)
    assert len(paths) == 222
    assert [r.path for r in scan.records] == sorted(paths)
    # Several photos per person: the subject is the person, not the annotator (user.id).
    subjects = [r.subject for r in scan.records]
    assert len(set(subjects)) < len(subjects)
    assert Path(scan.root) == sample_dir.resolve()


@pytest.mark.full_data
def test_full_data_set_scans_clean(full_set_dir):
    scan = scan_legend(full_set_dir)
    assert len(scan.records) == 3000
    assert scan.problems == []
    assert {label for r in scan.records for label in r.labels} <= set(EXPRESSIONS)


# ---------------------------------------------------------------- legend: encodings and headers

LEGEND = "user.id,image,emotion\nann1,s01_1.jpg,HAPPY\nann2,s01_2.jpg,sad\nann1,s02_1.jpg,ANGER\n"
EXPECTED = [
    ("images/s01_1.jpg", ("happiness",), "s01"),
    ("images/s01_2.jpg", ("sadness",), "s01"),
    ("images/s02_1.jpg", ("anger",), "s02"),
]


def triples(scan):
    return [(r.path, r.labels, r.subject) for r in scan.records]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "BOM"])
def test_legend_line_endings_and_bom(tmp_path, newline, bom):
    scan = scan_legend(legend_source(tmp_path, LEGEND, newline=newline, bom=bom))
    assert triples(scan) == EXPECTED
    assert scan.problems == []
    assert [r.row for r in scan.records] == ["legend.csv:2", "legend.csv:3", "legend.csv:4"]


def test_legend_header_with_stray_spaces_and_other_case(tmp_path):
    text = "User.ID , Image ,EMOTION\nann1, s01_1.jpg ,HAPPY\nann2,s01_2.jpg, sad \nann1,s02_1.jpg,ANGER\n"
    root = legend_source(tmp_path, text, bom=True, newline="\r\n")
    scan = scan_source(f"legend:{root}")
    assert triples(scan) == EXPECTED
    assert scan.problems == []


def test_legend_blank_lines_are_not_rows_and_line_numbers_stay_physical(tmp_path):
    text = "user.id,image,emotion\n\nann1,s01_1.jpg,happy\n   \n,,\nann1,s02_1.jpg,bogus\n"
    scan = scan_legend(legend_source(tmp_path, text))
    assert [r.row for r in scan.records] == ["legend.csv:3"]
    assert reasons(scan) == [("legend.csv:6", "unknown_label")]


def test_legend_csv_file_path_and_no_images_folder(tmp_path):
    root = tmp_path / "flat"
    touch(root / "s01_1.jpg")
    (root / "labels.csv").write_text("image,emotion\ns01_1.jpg,neutral\n")
    scan = scan_source(f"legend:{root / 'labels.csv'}")
    assert triples(scan) == [("s01_1.jpg", ("neutral",), "s01")]
    assert scan.records[0].row == "labels.csv:2"


def test_legend_subject_column_and_pattern_fallback(tmp_path):
    root = legend_source(tmp_path, "image,emotion,person\ns01_1.jpg,happy,P7\nnounderscore.jpg,sad,P8\n",
                         images=("s01_1.jpg", "nounderscore.jpg"))
    by_column = scan_legend(root, subject_column=" PERSON ")
    assert sorted(r.subject for r in by_column.records) == ["P7", "P8"]
    by_pattern = scan_legend(root)
    assert {r.path: r.subject for r in by_pattern.records} == {
        "images/s01_1.jpg": "s01",
        "images/nounderscore.jpg": "nounderscore",  # no match -> file stem (logged)
    }
    custom = scan_legend(root, subject_pattern=r"^(?P<subject>s\d)")
    assert {r.subject for r in custom.records} == {"s0", "nounderscore"}
    with pytest.raises(ValueError, match="subject"):
        scan_legend(root, subject_pattern=r"^(?P<person>\w+)_")


# ---------------------------------------------------------------- legend: bad rows


def test_legend_every_row_ends_as_record_or_problem(tmp_path):
    outside = touch(tmp_path / "x.jpg")  # a real file next to (outside) the source root
    root = legend_source(tmp_path, "\n".join([
        "user.id,image,emotion",
        "a,s01_1.jpg,happy",           # 2 record
        "a,s01_1.jpg,happy",           # 3 exact duplicate
        "b,s01_1.jpg,HAPPINESS",       # 4 same image, same label, other annotator
        "a,s01_2.jpg,sad",             # 5 conflicts with 6
        "b,s01_2.jpg,anger",           # 6
        "a,../../x.jpg,happy",         # 7 escapes the root (names resolve under images/)
        "a,sub/../../../x.jpg,happy",  # 8 escapes the root
        "a,/etc/passwd,happy",         # 9 absolute
        "a,link.jpg,happy",            # 10 symlink to a file outside the root
        "a,nothere.jpg,happy",         # 11 missing
        "a,s02_1.jpg,grinning",        # 12 unknown label
        "a,s02_1.jpg",                 # 13 too few fields
        "a,s02_1.jpg,happy,extra",     # 14 too many fields
        "a,,happy",                    # 15 empty image
        "a,s02_1.jpg,",                # 16 empty label
        "a,.,happy",                   # 17 a directory
        "a,s02_1.jpg,fearful",         # 18 record
    ]) + "\n")
    os.symlink(outside, root / "images" / "link.jpg")
    scan = scan_legend(root)
    assert triples(scan) == [
        ("images/s01_1.jpg", ("happiness",), "s01"),
        ("images/s02_1.jpg", ("fear",), "s02"),
    ]
    assert reasons(scan) == [
        ("legend.csv:3", "duplicate_row"),
        ("legend.csv:4", "duplicate_image"),
        ("legend.csv:5", "conflicting_rows"),
        ("legend.csv:6", "conflicting_rows"),
        ("legend.csv:7", "path_outside_root"),
        ("legend.csv:8", "path_outside_root"),
        ("legend.csv:9", "path_outside_root"),
        ("legend.csv:10", "path_outside_root"),
        ("legend.csv:11", "missing_file"),
        ("legend.csv:12", "unknown_label"),
        ("legend.csv:13", "malformed_row"),
        ("legend.csv:14", "malformed_row"),
        ("legend.csv:15", "missing_value"),
        ("legend.csv:16", "missing_value"),
        ("legend.csv:17", "not_a_file"),
    ]
    assert len(scan.records) + len(scan.problems) == 17  # data rows in the legend
    problems = {p.where: p for p in scan.problems}
    assert "legend.csv:2" in problems["legend.csv:3"].detail
    assert "'grinning'" in problems["legend.csv:12"].detail
    assert "happiness" in problems["legend.csv:12"].detail


def test_legend_flat_layout_parent_path_escapes(tmp_path):
    touch(tmp_path / "x.jpg")
    root = tmp_path / "flat"
    touch(root / "s01_1.jpg")
    (root / "legend.csv").write_text("image,emotion\n../x.jpg,happy\nsub/../s01_1.jpg,sad\n")
    scan = scan_legend(root)
    assert reasons(scan) == [("legend.csv:2", "path_outside_root")]
    assert triples(scan) == [("s01_1.jpg", ("sadness",), "s01")]


def test_legend_with_a_dataset_vocabulary(tmp_path):
    kdef = Vocabulary(name="kdef", labels=EXPRESSIONS, synonyms={"AF": "fear", "HA": "happiness"})
    root = legend_source(tmp_path, "image,emotion\ns01_1.jpg,af\ns01_2.jpg,HA\ns02_1.jpg,ZZ\n")
    scan = scan_legend(root, vocabulary=kdef)
    assert [r.labels for r in scan.records] == [("fear",), ("happiness",)]
    assert reasons(scan) == [("legend.csv:4", "unknown_label")]
    assert "kdef" in scan.problems[0].detail
    assert scan.vocabulary is kdef
    assert [p.reason for p in scan_legend(root).problems] == ["unknown_label"] * 3


def test_legend_trailing_empty_cells_are_tolerated(tmp_path):
    scan = scan_legend(legend_source(tmp_path, "image,emotion\ns01_1.jpg,happy,,\n"))
    assert triples(scan) == [("images/s01_1.jpg", ("happiness",), "s01")]


def test_legend_empty_or_headless_or_missing(tmp_path):
    empty = legend_source(tmp_path, "")
    with pytest.raises(SourceError, match="empty"):
        scan_legend(empty)
    (empty / "legend.csv").write_text("user.id,image,emotion\n\n\r\n")
    with pytest.raises(SourceError, match="no rows"):
        scan_legend(empty)
    (empty / "legend.csv").write_text("user.id,picture,emotion\na,s01_1.jpg,happy\n")
    with pytest.raises(SourceError, match="'image'.*picture"):
        scan_legend(empty)
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError, match="nowhere"):
        scan_source(f"legend:{missing}")
    no_legend = tmp_path / "nolegend"
    no_legend.mkdir()
    with pytest.raises(SourceError, match="legend.csv"):
        scan_legend(no_legend)


def test_legend_non_utf8_is_a_source_error(tmp_path):
    root = legend_source(tmp_path, "")
    (root / "legend.csv").write_bytes("image,emotion\ns01_1.jpg,héhé\n".encode("latin-1"))
    with pytest.raises(SourceError, match="utf-8"):
        scan_legend(root)


# ---------------------------------------------------------------- folders


def test_folders_layout(tmp_path):
    root = tmp_path / "faces"
    outside = touch(tmp_path / "secret.jpg")
    touch(root / "happy" / "s1_a.png")
    touch(root / "Sad" / "s2_b.png")
    touch(root / "angry" / "deeper" / "s1_c.png")
    touch(root / "sad" / "notes.txt")               # an input; decode rejects it later
    touch(root / ".DS_Store")
    touch(root / "happy" / ".hidden.png")
    touch(root / ".git" / "objects" / "ab")         # one problem for the whole hidden folder
    touch(root / "README.txt")
    touch(root / "grin" / "s3_d.png")
    os.symlink(outside, root / "happy" / "escape.png")
    os.symlink(root / "happy", root / "joy")
    scan = scan_source(f"folders:{root}", subject_pattern=r"^(?P<subject>[^_]+)_")
    assert triples(scan) == [
        ("Sad/s2_b.png", ("sadness",), "s2"),
        ("angry/deeper/s1_c.png", ("anger",), "s1"),
        ("happy/s1_a.png", ("happiness",), "s1"),
        ("sad/notes.txt", ("sadness",), "notes"),
    ]
    assert sorted(reasons(scan)) == [
        (".DS_Store", "hidden_file"),
        (".git", "hidden_file"),
        ("README.txt", "unlabelled_file"),
        ("grin/s3_d.png", "unknown_label"),
        ("happy/.hidden.png", "hidden_file"),
        ("happy/escape.png", "path_outside_root"),
        ("joy", "symlinked_dir"),
    ]
    default_subjects = scan_folders(root)
    assert {r.subject for r in default_subjects.records} == {"s2_b", "s1_c", "s1_a", "notes"}


def test_folders_empty_or_missing(tmp_path):
    with pytest.raises(SourceError, match="empty"):
        scan_folders(tmp_path)
    with pytest.raises(SourceError, match="missing-dir"):
        scan_source(f"folders:{tmp_path / 'missing-dir'}")


# ---------------------------------------------------------------- pattern


def test_pattern_layout(tmp_path):
    root = tmp_path / "pat"
    for name in ("S01_happy.png", "S01_sad.jpg", "sub/S02_ANGRY.png", "badname.png", "S03_grin.png",
                 "S04_fear"):
        touch(root / name)
    pattern = r"(?P<subject>S\d+)_(?P<label>[A-Za-z]+)"
    scan = scan_source(f"pattern:{root}", pattern=pattern)
    assert triples(scan) == [
        ("S01_happy.png", ("happiness",), "S01"),
        ("S01_sad.jpg", ("sadness",), "S01"),
        ("S04_fear", ("fear",), "S04"),
        ("sub/S02_ANGRY.png", ("anger",), "S02"),
    ]
    assert reasons(scan) == [("S03_grin.png", "unknown_label"), ("badname.png", "pattern_mismatch")]
    with pytest.raises(ValueError, match="label"):
        scan_pattern(root, pattern=r"(?P<subject>S\d+)_.*")


# ---------------------------------------------------------------- celeba


def celeba_source(tmp_path: Path, attr_text: str, identity: str | None = None) -> Path:
    root = tmp_path / "celeba"
    for name in ("000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"):
        touch(root / "img_align_celeba" / name)
    (root / "list_attr_celeba.txt").write_text(attr_text)
    if identity is not None:
        (root / "identity_CelebA.txt").write_text(identity)
    return root


CELEBA = (
    "4\n"
    "5_o_Clock_Shadow Smiling  Male \n"
    "000001.jpg  -1  1  1\n"
    "000002.jpg  1 -1 -1\n"
    "000003.jpg  1  1\n"
    "000004.jpg -1 -1 -1\n"
)


def test_celeba_layout_with_identities(tmp_path):
    root = celeba_source(tmp_path, CELEBA, identity="000001.jpg 2880\n000002.jpg 2880\n000004.jpg 7\n")
    scan = scan_source(f"celeba:{root}")
    assert scan.vocabulary.labels == ("5_o_Clock_Shadow", "Smiling", "Male")
    assert scan.vocabulary.multi_label
    assert triples(scan) == [
        ("img_align_celeba/000001.jpg", ("Smiling", "Male"), "2880"),
        ("img_align_celeba/000002.jpg", ("5_o_Clock_Shadow",), "2880"),
        ("img_align_celeba/000004.jpg", (), "7"),
    ]
    assert reasons(scan) == [("list_attr_celeba.txt:5", "malformed_row")]
    np.testing.assert_array_equal(scan.vocabulary.one_hot(scan.records[0].labels), [0, 1, 1])


def test_celeba_attribute_subset_count_mismatch_and_bad_values(tmp_path):
    text = CELEBA.replace("4\n", "5\n", 1).replace("000003.jpg  1  1\n", "000003.jpg  1  2 1\n")
    root = celeba_source(tmp_path, text)
    scan = scan_celeba(root, attributes=["MALE", "smiling"])
    assert scan.vocabulary.labels == ("Male", "Smiling")
    assert triples(scan) == [
        ("img_align_celeba/000001.jpg", ("Male", "Smiling"), "000001"),
        ("img_align_celeba/000002.jpg", (), "000002"),
        ("img_align_celeba/000004.jpg", (), "000004"),
    ]
    assert reasons(scan) == [
        ("list_attr_celeba.txt:1", "count_mismatch"),
        ("list_attr_celeba.txt:5", "malformed_row"),
    ]
    with pytest.raises(SourceError, match="Bald"):
        scan_celeba(root, attributes=["Bald"])


# ---------------------------------------------------------------- fer2013


def fer_pixels(value: int) -> str:
    return " ".join(str((value + i) % 256) for i in range(48 * 48))


def test_fer2013_layout(tmp_path):
    good = fer_pixels(0)
    rows = [
        "emotion,pixels,Usage",
        f"3,{good},Training",                                   # 2 happiness
        f"3,{good},Training",                                   # 3 exact duplicate
        f"6,{fer_pixels(7)},PublicTest",                        # 4 neutral
        f"7,{fer_pixels(9)},Training",                          # 5 no such emotion
        f"0,{' '.join(['1'] * 100)},Training",                  # 6 too few pixels
        f"0,{fer_pixels(3).replace('3', '999', 1)},Training",   # 7 value > 255
        f"1,{fer_pixels(5)},Training",                          # 8 conflicts with 9
        f"2,{fer_pixels(5)},PrivateTest",                       # 9
    ]
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    scan = scan_source(f"fer2013:{tmp_path}")
    assert [(r.path, r.labels, r.subject, r.row) for r in scan.records] == [
        ("fer2013.csv#2", ("happiness",), "fer2", "fer2013.csv:2"),
        ("fer2013.csv#4", ("neutral",), "fer4", "fer2013.csv:4"),
    ]
    assert reasons(scan) == [
        ("fer2013.csv:3", "duplicate_row"),
        ("fer2013.csv:5", "unknown_label"),
        ("fer2013.csv:6", "malformed_row"),
        ("fer2013.csv:7", "malformed_row"),
        ("fer2013.csv:8", "conflicting_rows"),
        ("fer2013.csv:9", "conflicting_rows"),
    ]
    image = decode_image(scan.records[0].data)
    expected = (np.arange(48 * 48) % 256).astype(np.uint8).reshape(48, 48)
    assert image.shape == (48, 48, 3)
    np.testing.assert_array_equal(image[..., 0], expected)
    np.testing.assert_array_equal(image[..., 2], expected)
    assert read_record_bytes(scan.root, scan.records[0]) == scan.records[0].data
    by_file = scan_fer2013(tmp_path / "fer2013.csv")
    assert by_file.records == scan.records and by_file.problems == scan.problems
    assert FER2013_LABELS[3] == "happiness" and FER2013_LABELS[6] == "neutral"


# ---------------------------------------------------------------- registry and reading


def test_scan_source_registry_and_spec_errors(tmp_path):
    assert set(LAYOUTS) == {"legend", "folders", "celeba", "fer2013", "pattern"}
    with pytest.raises(KeyError) as info:
        scan_source(f"lmdb:{tmp_path}")
    for name in LAYOUTS:
        assert name in str(info.value)
    with pytest.raises(SourceError, match="LAYOUT:PATH"):
        scan_source(str(tmp_path).lstrip("/").replace(":", ""))
    with pytest.raises(TypeError):
        scan_source(f"folders:{tmp_path}", image_column="x")


def test_read_record_bytes_rechecks_the_root(tmp_path):
    root = legend_source(tmp_path, LEGEND)
    scan = scan_legend(root)
    record = scan.records[0]
    assert read_record_bytes(scan.root, record) == PNG
    # The file is swapped for a symlink to a file outside the root after the scan.
    secret = touch(tmp_path / "secret.jpg", b"secret")
    target = root / record.path
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(SourceError) as info:
        read_record_bytes(scan.root, record)
    assert info.value.reason == "path_outside_root"
    target.unlink()
    with pytest.raises(SourceError) as info:
        read_record_bytes(scan.root, record)
    assert info.value.reason == "missing_file"
    os.mkfifo(target)  # must not block
    with pytest.raises(SourceError) as info:
        read_record_bytes(scan.root, record)
    assert info.value.reason == "not_a_file"
    big = scan.records[1]
    with pytest.raises(SourceError) as info:
        read_record_bytes(scan.root, big, max_bytes=10)
    assert info.value.reason == "file_too_large"


def test_records_and_problems_are_frozen_and_reasons_are_checked():
    record = SourceRecord(path="a.png", labels=("anger",), subject="s", row="x:2")
    with pytest.raises(AttributeError):
        record.path = "b.png"  # type: ignore[misc]
    assert SourceProblem("x:2", "missing_file", "gone").reason in PROBLEM_REASONS
    with pytest.raises(ValueError, match="unknown problem reason"):
        SourceProblem("x:2", "oops", "?")
