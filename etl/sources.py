"""Source-layout readers: turn an image database's layout into SourceRecords and SourceProblems.

Every input row (or file, for directory layouts) ends either as a ``SourceRecord`` or as a
``SourceProblem`` with a stable ``reason`` code; nothing is dropped silently, except blank
CSV/text lines, which are not rows. Records carry paths relative to the resolved source
root (POSIX, symlinks resolved, always inside the root), never pixels, except FER2013 whose
pixels live in the CSV. Labels are canonical; raw labels are never guessed.

Readers are pure Python (no Spark): the pipeline scans on the driver, then reads bytes on
executors with ``read_record_bytes``, which re-checks containment at read time.

Dedupe at scan time (the pipeline also dedupes by pixel hash after decoding):
  exact duplicate rows (same cells)                    -> "duplicate_row" for the repeats;
  rows naming the same image with the same labels/subject -> first kept, "duplicate_image";
  rows naming the same image but disagreeing            -> all of them "conflicting_rows".
Subject fallback: when a subject pattern does not match a file name (or CelebA's identity
file lacks the image), the subject is the file stem; this is logged as a warning with a count.

Layouts (``scan_source("LAYOUT:PATH", **options)``; PATH is the root or its index file):
  legend   CSV; names resolve under root/images/ when that folder exists, else the root
           (``image_dir`` overrides). Subject: ``subject_column`` or ``subject_pattern`` on the
           file name. Row ids are physical line numbers ("legend.csv:17", header = line 1).
  folders  root/<label>/...; dot-files and dot-directories are "hidden_file" problems (dot
           directories are not descended); symlinked directories are not followed.
  celeba   list_attr_celeba.txt (+ identity_CelebA.txt when present); multi-label; the scan's
           vocabulary holds the kept attribute names.
  fer2013  fer2013.csv; FER has no identities, so subject = "fer<line>" and a split by subject
           degenerates to a split by image. The Usage column is ignored.
  pattern  a regex with (?P<subject>) and (?P<label>) fully matching each file name, or its stem.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from etl.decode import encode_png
from schemas.vocabulary import EXPRESSION_VOCABULARY, UnknownLabel, Vocabulary

log = logging.getLogger(__name__)

# Stable codes of SourceProblem.reason.
PROBLEM_REASONS: tuple[str, ...] = (
    "unknown_label",      # a label that is no canonical label or synonym
    "missing_value",      # an empty required cell (image, label, subject)
    "malformed_row",      # wrong number of fields/values, bad pixel string, bad CelebA value
    "multiple_labels",    # several different labels on one row of a single-label vocabulary
    "duplicate_row",      # an exact repeat of an earlier row
    "duplicate_image",    # another row for an already-listed image, agreeing with it
    "conflicting_rows",   # rows for the same image that disagree on labels or subject
    "missing_file",       # the named file does not exist (or is a dangling symlink)
    "not_a_file",         # a directory, FIFO, socket, device or symlink loop
    "path_outside_root",  # absolute, ../ or symlinked path resolving outside the source root
    "hidden_file",        # a dot-file or dot-directory (not descended) in a directory layout
    "symlinked_dir",      # a symlink to a directory inside the root (not followed)
    "unlabelled_file",    # a file directly under the root of the folders layout
    "pattern_mismatch",   # a file name the pattern layout's regex does not match
    "count_mismatch",     # CelebA's first-line row count disagrees with the rows found
    "unreadable",         # a directory under the root that cannot be listed
)

DEFAULT_SUBJECT_PATTERN = r"^(?P<subject>[^_]+)_"

# FER2013's emotion column indexes this tuple.
FER2013_LABELS: tuple[str, ...] = (
    "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral",
)
FER2013_SIDE = 48


@dataclass(frozen=True)
class SourceRecord:
    """One image of a source: where it is, its canonical labels and its raw subject id."""

    path: str
    labels: tuple[str, ...]
    subject: str
    row: str
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SourceProblem:
    """An input row or file that cannot become a record; ``reason`` is a stable code."""

    where: str
    reason: str
    detail: str
    path: str | None = None  # the file concerned, as named by the source, when there is one

    def __post_init__(self) -> None:
        if self.reason not in PROBLEM_REASONS:
            raise ValueError(
                f"unknown problem reason {self.reason!r}; known: {', '.join(PROBLEM_REASONS)}"
            )


@dataclass(frozen=True)
class SourceScan:
    """A scanned source: records (sorted by path), problems (in input order), root, vocabulary."""

    records: list[SourceRecord]
    problems: list[SourceProblem]
    root: str = ""
    vocabulary: Vocabulary = EXPRESSION_VOCABULARY


class SourceError(ValueError):
    """A source that cannot be scanned or a record file that cannot be read.

    ``reason`` is "invalid_source" for scan-time errors; read_record_bytes uses
    "path_outside_root", "missing_file", "not_a_file", "file_too_large" or "unreadable".
    """

    def __init__(self, message: str, *, reason: str = "invalid_source"):
        self.reason = reason
        super().__init__(message)


# ---------------------------------------------------------------- shared helpers


@dataclass
class _Candidate:
    ordinal: int
    where: str
    cells: bytes | None      # digest of the raw row, for exact-duplicate detection
    identity: object         # what "the same image" means for this layout
    record: SourceRecord


class _Collector:
    """Accumulates candidates and problems in input order and applies the dedupe rules."""

    def __init__(self) -> None:
        self.candidates: list[_Candidate] = []
        self.problems: list[tuple[int, SourceProblem]] = []
        self.subject_fallbacks: list[str] = []

    def problem(self, ordinal: int, where: str, reason: str, detail: str, path: str | None = None) -> None:
        self.problems.append((ordinal, SourceProblem(where, reason, detail, path)))

    def finish(self, root: Path, vocabulary: Vocabulary, source: str) -> SourceScan:
        kept: list[_Candidate] = []
        first_row: dict[bytes, str] = {}
        for cand in self.candidates:
            if cand.cells is not None:
                first = first_row.setdefault(cand.cells, cand.where)
                if first != cand.where:
                    self.problem(cand.ordinal, cand.where, "duplicate_row", f"repeats {first}",
                                 cand.record.path)
                    continue
            kept.append(cand)
        groups: dict[object, list[_Candidate]] = defaultdict(list)
        for cand in kept:
            groups[cand.identity].append(cand)
        records: list[SourceRecord] = []
        for group in groups.values():
            head = group[0]
            agree = all(
                c.record.labels == head.record.labels and c.record.subject == head.record.subject
                for c in group
            )
            if agree:
                records.append(head.record)
                for cand in group[1:]:
                    self.problem(
                        cand.ordinal, cand.where, "duplicate_image",
                        f"{cand.record.path} already listed at {head.where}", cand.record.path,
                    )
                continue
            versions = "; ".join(
                f"{c.where}: labels={list(c.record.labels)} subject={c.record.subject!r}"
                for c in group
            )
            for cand in group:
                self.problem(cand.ordinal, cand.where, "conflicting_rows",
                             f"{cand.record.path} is listed with different labels or subjects ({versions})",
                             cand.record.path)
        records.sort(key=lambda r: (r.path, r.row))
        problems = [p for _, p in sorted(self.problems, key=lambda item: item[0])]
        if self.subject_fallbacks:
            log.warning(
                "%s: %d file name(s) gave no subject; used the file stem (e.g. %s)",
                source, len(self.subject_fallbacks), ", ".join(self.subject_fallbacks[:3]),
            )
        log.info(
            "%s: %d records, %d problems %s", source, len(records), len(problems),
            dict(Counter(p.reason for p in problems)),
        )
        return SourceScan(records=records, problems=problems, root=str(root), vocabulary=vocabulary)


def _digest(cells: Sequence[str]) -> bytes:
    return hashlib.sha256("\x1f".join(cells).encode("utf-8", "surrogatepass")).digest()


def _existing(path: str | os.PathLike) -> Path:
    """The path, which must exist; raises SourceError naming it."""
    candidate = Path(path)
    if not candidate.exists():
        raise SourceError(f"source path does not exist: {candidate}")
    return candidate


def _root_and_file(path: str | os.PathLike, default_name: str) -> tuple[Path, Path]:
    """(resolved root directory, index file) for a path naming the directory or the file."""
    given = _existing(path)
    if given.is_dir():
        root = given.resolve()
        index = root / default_name
        if not index.is_file():
            raise SourceError(f"source {given} has no {default_name}")
        return root, index
    return given.resolve().parent, given.resolve()


def _subdir(root: Path, name: str | None, default: str) -> Path:
    """Image directory under the root: ``name``, else ``default`` when it exists, else the root."""
    if name is None:
        return root / default if (root / default).is_dir() else root
    base = (root / name).resolve()
    if not base.is_relative_to(root) or not base.is_dir():
        raise SourceError(f"image directory {name!r} is not a directory inside {root}")
    return base


def _resolve_named(root: Path, base: Path, raw: str) -> tuple[str | None, str, str]:
    """Resolve a file named by a row: (relative POSIX path, "", "") or (None, reason, detail)."""
    name = raw.strip().replace("\\", "/")
    if "\x00" in name:
        return None, "malformed_row", f"file name {raw!r} contains NUL"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None, "path_outside_root", f"{raw!r} is an absolute path"
    try:
        target = (base / name).resolve()
    except (OSError, RuntimeError) as exc:
        return None, "not_a_file", f"{raw!r} cannot be resolved: {exc}"
    if not target.is_relative_to(root):
        return None, "path_outside_root", f"{raw!r} resolves outside the source root"
    if not target.exists():
        return None, "missing_file", f"{raw!r} does not exist"
    if not target.is_file():
        return None, "not_a_file", f"{raw!r} is not a regular file"
    return target.relative_to(root).as_posix(), "", ""


def _compile_subject_pattern(pattern: str | re.Pattern | None) -> re.Pattern | None:
    if pattern is None:
        return None
    compiled = re.compile(pattern)
    if "subject" not in compiled.groupindex:
        raise ValueError(f"subject pattern {compiled.pattern!r} has no (?P<subject>...) group")
    return compiled


def _subject_from_name(name: str, pattern: re.Pattern | None, collector: _Collector) -> str:
    """Subject from a file name via the pattern; the file stem when there is no match."""
    file_name = PurePosixPath(name).name
    if pattern is not None:
        match = pattern.search(file_name)
        if match and match.group("subject"):
            return match.group("subject")
        collector.subject_fallbacks.append(file_name)
    return PurePosixPath(file_name).stem


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not {encoding} text: {exc}") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None


def _csv_rows(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(physical line number, cells) of non-blank CSV rows; BOM, CRLF and CR-only tolerated."""
    reader = csv.reader(io.StringIO(_read_text(path, encoding), newline=""), delimiter=delimiter)
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield reader.line_num, cells
    except csv.Error as exc:
        raise SourceError(f"{path.name}:{reader.line_num}: unreadable CSV: {exc}") from None


def _header_index(header: list[str], wanted: Mapping[str, str], path: Path) -> dict[str, int]:
    """Column positions for wanted {role: column name}, matched stripped and case-insensitively."""
    normalised = [cell.strip().lstrip("\ufeff").strip().casefold() for cell in header]
    positions: dict[str, int] = {}
    for role, column in wanted.items():
        key = column.strip().casefold()
        hits = [i for i, cell in enumerate(normalised) if cell == key]
        if not hits:
            raise SourceError(
                f"{path}: no column {column!r} ({role}); the header has {[c.strip() for c in header]}"
            )
        if len(hits) > 1:
            raise SourceError(f"{path}: column {column!r} appears {len(hits)} times in the header")
        positions[role] = hits[0]
    return positions


def _fit_row(cells: list[str], width: int) -> list[str] | None:
    """The row at the header's width (trailing empty cells dropped), or None if it does not fit."""
    if len(cells) > width and not any(c.strip() for c in cells[width:]):
        cells = cells[:width]
    return cells if len(cells) == width else None


# ---------------------------------------------------------------- layouts


def _data_rows(rows, header, csv_path: Path, collector: "_Collector"):
    """Data rows as (line, "file:line", stripped cells); wrong widths become problems, no rows an error."""
    seen = 0
    for line, raw_cells in rows:
        seen += 1
        where = f"{csv_path.name}:{line}"
        cells = _fit_row(raw_cells, len(header))
        if cells is None:
            collector.problem(line, where, "malformed_row",
                              f"expected {len(header)} fields, found {len(raw_cells)}")
            continue
        yield line, where, [cell.strip() for cell in cells]
    if seen == 0:
        raise SourceError(f"{csv_path} has a header but no rows")


def scan_legend(
    path: str | os.PathLike,
    *,
    legend: str = "legend.csv",
    image_column: str = "image",
    label_columns: Sequence[str] | str = ("emotion",),
    subject_column: str | None = None,
    subject_pattern: str | re.Pattern | None = DEFAULT_SUBJECT_PATTERN,
    image_dir: str | None = None,
    vocabulary: Vocabulary = EXPRESSION_VOCABULARY,
    encoding: str = "utf-8-sig",
    delimiter: str = ",",
) -> SourceScan:
    """Scan a CSV legend naming image files (under images/ if present) and their labels."""
    root, csv_path = _root_and_file(path, legend)
    base = _subdir(root, image_dir, "images")
    pattern = _compile_subject_pattern(subject_pattern)
    if isinstance(label_columns, str):
        label_columns = (label_columns,)
    rows = _csv_rows(csv_path, encoding, delimiter)
    header_row = next(rows, None)
    if header_row is None:
        raise SourceError(f"legend {csv_path} is empty")
    _, header = header_row
    wanted = {"image": image_column}
    wanted.update({f"label {i}": column for i, column in enumerate(label_columns)})
    if subject_column is not None:
        wanted["subject"] = subject_column
    columns = _header_index(header, wanted, csv_path)
    label_roles = [f"label {i}" for i in range(len(label_columns))]

    collector = _Collector()
    for line, where, cells in _data_rows(rows, header, csv_path, collector):
        # Required values
        empty = [wanted[role] for role in columns if not cells[columns[role]]]
        if empty:
            collector.problem(line, where, "missing_value", f"empty {', '.join(empty)}")
            continue
        # Labels (never guessed)
        try:
            labels = {vocabulary.canonical(cells[columns[role]]) for role in label_roles}
        except UnknownLabel as exc:
            collector.problem(line, where, "unknown_label", str(exc))
            continue
        if len(labels) > 1 and not vocabulary.multi_label:
            collector.problem(line, where, "multiple_labels", f"labels {sorted(labels)}")
            continue
        # The file, inside the root
        name = cells[columns["image"]]
        rel, reason, detail = _resolve_named(root, base, name)
        if rel is None:
            collector.problem(line, where, reason, detail, name)
            continue
        if subject_column is not None:
            subject = cells[columns["subject"]]
        else:
            subject = _subject_from_name(name, pattern, collector)
        ordered = tuple(label for label in vocabulary.labels if label in labels)
        record = SourceRecord(path=rel, labels=ordered, subject=subject, row=where)
        collector.candidates.append(_Candidate(line, where, _digest(cells), rel, record))
    return collector.finish(root, vocabulary, f"legend:{csv_path}")


@dataclass(frozen=True)
class _WalkItem:
    listed: str             # path as found under the root (POSIX)
    real: str | None        # resolved path relative to the root, for regular files
    reason: str = ""
    detail: str = ""


def _walk(root: Path) -> Iterator[_WalkItem]:
    """Every entry under root, sorted; hidden entries, symlinks and special files flagged."""
    def visit(directory: Path, prefix: str) -> Iterator[_WalkItem]:
        try:
            with os.scandir(directory) as entries:
                ordered = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            if not prefix:
                raise SourceError(f"cannot list source directory {directory}: {exc}") from None
            yield _WalkItem(prefix.rstrip("/"), None, "unreadable", f"cannot list: {exc.strerror}")
            return
        for entry in ordered:
            listed = f"{prefix}{entry.name}"
            if entry.name.startswith("."):
                kind = "directory (not descended)" if entry.is_dir(follow_symlinks=False) else "file"
                yield _WalkItem(listed, None, "hidden_file", f"hidden {kind}")
            elif entry.is_symlink():
                yield _symlink_item(root, Path(entry.path), listed)
            elif entry.is_dir(follow_symlinks=False):
                yield from visit(Path(entry.path), f"{listed}/")
            elif entry.is_file(follow_symlinks=False):
                yield _WalkItem(listed, listed)
            else:
                yield _WalkItem(listed, None, "not_a_file", "not a regular file")

    yield from visit(root, "")


def _symlink_item(root: Path, link: Path, listed: str) -> _WalkItem:
    try:
        target = link.resolve()
    except (OSError, RuntimeError) as exc:
        return _WalkItem(listed, None, "not_a_file", f"symlink cannot be resolved: {exc}")
    if not target.is_relative_to(root):
        return _WalkItem(listed, None, "path_outside_root", "symlink points outside the source root")
    if target.is_dir():
        return _WalkItem(listed, None, "symlinked_dir", "symlinked directory (not followed)")
    if not target.exists():
        return _WalkItem(listed, None, "missing_file", "dangling symlink")
    if not target.is_file():
        return _WalkItem(listed, None, "not_a_file", "symlink to a non-regular file")
    return _WalkItem(listed, target.relative_to(root).as_posix())


def _walk_root(path: str | os.PathLike) -> tuple[Path, list[_WalkItem]]:
    given = _existing(path)
    if not given.is_dir():
        raise SourceError(f"source path is not a directory: {given}")
    root = given.resolve()
    items = list(_walk(root))
    if not items:
        raise SourceError(f"source directory is empty: {given}")
    return root, items


def scan_folders(
    path: str | os.PathLike,
    *,
    subject_pattern: str | re.Pattern | None = None,
    vocabulary: Vocabulary = EXPRESSION_VOCABULARY,
) -> SourceScan:
    """Scan root/<label>/<file> (any depth below the label folder); subject = file stem by default."""
    root, items = _walk_root(path)
    pattern = _compile_subject_pattern(subject_pattern)
    collector = _Collector()
    for ordinal, item in enumerate(items):
        if item.real is None:
            collector.problem(ordinal, item.listed, item.reason, item.detail, path=item.listed)
            continue
        parts = item.listed.split("/")
        if len(parts) == 1:
            collector.problem(ordinal, item.listed, "unlabelled_file", "not inside a label folder", path=item.listed)
            continue
        try:
            label = vocabulary.canonical(parts[0])
        except UnknownLabel as exc:
            collector.problem(ordinal, item.listed, "unknown_label", str(exc), path=item.listed)
            continue
        subject = _subject_from_name(item.listed, pattern, collector)
        record = SourceRecord(path=item.real, labels=(label,), subject=subject, row=item.listed)
        collector.candidates.append(_Candidate(ordinal, item.listed, None, item.real, record))
    return collector.finish(root, vocabulary, f"folders:{root}")


def scan_pattern(
    path: str | os.PathLike,
    *,
    pattern: str | re.Pattern,
    vocabulary: Vocabulary = EXPRESSION_VOCABULARY,
) -> SourceScan:
    """Scan files (recursively) whose names fully match a regex with subject and label groups."""
    compiled = re.compile(pattern)
    missing = {"subject", "label"} - set(compiled.groupindex)
    if missing:
        raise ValueError(f"pattern {compiled.pattern!r} lacks group(s) {sorted(missing)}")
    root, items = _walk_root(path)
    collector = _Collector()
    for ordinal, item in enumerate(items):
        if item.real is None:
            collector.problem(ordinal, item.listed, item.reason, item.detail, path=item.listed)
            continue
        name = PurePosixPath(item.listed).name
        match = compiled.fullmatch(name) or compiled.fullmatch(PurePosixPath(name).stem)
        if not match or not match.group("subject") or not match.group("label"):
            collector.problem(ordinal, item.listed, "pattern_mismatch",
                              f"{name!r} does not match {compiled.pattern!r}", path=item.listed)
            continue
        try:
            label = vocabulary.canonical(match.group("label"))
        except UnknownLabel as exc:
            collector.problem(ordinal, item.listed, "unknown_label", str(exc), path=item.listed)
            continue
        record = SourceRecord(path=item.real, labels=(label,), subject=match.group("subject"),
                              row=item.listed)
        collector.candidates.append(_Candidate(ordinal, item.listed, None, item.real, record))
    return collector.finish(root, vocabulary, f"pattern:{root}")


_CELEBA_VALUES = {"1": True, "+1": True, "-1": False, "0": False}


def _celeba_identities(root: Path, name: str, collector: _Collector) -> dict[str, str]:
    """file name -> identity from CelebA's identity file, when present inside the root."""
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return {}
    identities: dict[str, str] = {}
    for line, text in enumerate(_read_text(path, "utf-8-sig").splitlines(), start=1):
        tokens = text.split()
        if not tokens:
            continue
        where = f"{path.name}:{line}"
        if len(tokens) != 2:
            collector.problem(-1, where, "malformed_row", f"expected 'filename identity', got {text!r}")
            continue
        known = identities.setdefault(tokens[0], tokens[1])
        if known != tokens[1]:
            collector.problem(-1, where, "conflicting_rows",
                              f"{tokens[0]} has identities {known!r} and {tokens[1]!r}")
    return identities


def scan_celeba(
    path: str | os.PathLike,
    *,
    attr_file: str = "list_attr_celeba.txt",
    attributes: Sequence[str] | None = None,
    identity_file: str = "identity_CelebA.txt",
    image_dir: str | None = None,
) -> SourceScan:
    """Scan CelebA attribute text (count, names, 'file ±1 ...'); labels are the +1 attributes."""
    root, attr_path = _root_and_file(path, attr_file)
    base = _subdir(root, image_dir, "img_align_celeba")
    lines = _read_text(attr_path, "utf-8-sig").splitlines()
    if len(lines) < 2:
        raise SourceError(f"{attr_path} needs a count line and an attribute-name line")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise SourceError(f"{attr_path}:1: expected a row count, got {lines[0]!r}") from None
    names = lines[1].split()
    header_vocabulary = Vocabulary.from_attributes(names, name="celeba")
    if attributes is None:
        kept = list(names)
    else:
        try:
            kept = [header_vocabulary.canonical(a) for a in attributes]
        except UnknownLabel as exc:
            raise SourceError(f"{attr_path}: {exc}") from None
    vocabulary = Vocabulary.from_attributes(kept, name="celeba")
    positions = [names.index(name) for name in kept]

    collector = _Collector()
    identities = _celeba_identities(root, identity_file, collector)
    found = 0
    for line, text in enumerate(lines[2:], start=3):
        tokens = text.split()
        if not tokens:
            continue
        found += 1
        where = f"{attr_path.name}:{line}"
        if len(tokens) != len(names) + 1:
            collector.problem(line, where, "malformed_row",
                              f"expected a file name and {len(names)} values, found {len(tokens)} fields")
            continue
        bad = [value for value in tokens[1:] if value not in _CELEBA_VALUES]
        if bad:
            collector.problem(line, where, "malformed_row", f"values must be 1 or -1, found {bad[:3]}")
            continue
        rel, reason, detail = _resolve_named(root, base, tokens[0])
        if rel is None:
            collector.problem(line, where, reason, detail, name)
            continue
        labels = tuple(name for name, pos in zip(kept, positions) if _CELEBA_VALUES[tokens[1 + pos]])
        subject = identities.get(tokens[0])
        if subject is None:
            subject = _subject_from_name(tokens[0], None, collector)
            if identities:
                collector.subject_fallbacks.append(tokens[0])
        record = SourceRecord(path=rel, labels=labels, subject=subject, row=where)
        collector.candidates.append(_Candidate(line, where, _digest(tokens), rel, record))
    if found == 0:
        raise SourceError(f"{attr_path} has no attribute rows")
    if found != declared:
        collector.problem(1, f"{attr_path.name}:1", "count_mismatch",
                          f"declares {declared} rows, found {found}")
    return collector.finish(root, vocabulary, f"celeba:{attr_path}")


def _is_uint(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _fer_pixels(text: str) -> np.ndarray | None:
    """48x48 uint8 grey image from FER2013's space-separated pixel string, or None."""
    tokens = text.split()
    if len(tokens) != FER2013_SIDE * FER2013_SIDE or not all(_is_uint(t) for t in tokens):
        return None
    values = np.array([int(t) for t in tokens], dtype=np.int64)
    if values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)


def scan_fer2013(
    path: str | os.PathLike,
    *,
    csv_name: str = "fer2013.csv",
    encoding: str = "utf-8-sig",
) -> SourceScan:
    """Scan FER2013's CSV (emotion index, 48x48 pixels); records carry PNG bytes inline."""
    root, csv_path = _root_and_file(path, csv_name)
    rows = _csv_rows(csv_path, encoding, ",")
    header_row = next(rows, None)
    if header_row is None:
        raise SourceError(f"{csv_path} is empty")
    header = header_row[1]
    columns = _header_index(header, {"emotion": "emotion", "pixels": "pixels"}, csv_path)
    collector = _Collector()
    for line, where, cells in _data_rows(rows, header, csv_path, collector):
        emotion = cells[columns["emotion"]]
        if not (_is_uint(emotion) and int(emotion) < len(FER2013_LABELS)):
            collector.problem(line, where, "unknown_label",
                              f"emotion {emotion!r} is not an index 0..{len(FER2013_LABELS) - 1}")
            continue
        pixels = _fer_pixels(cells[columns["pixels"]])
        if pixels is None:
            collector.problem(line, where, "malformed_row",
                              f"pixels must be {FER2013_SIDE * FER2013_SIDE} integers 0..255")
            continue
        record = SourceRecord(
            path=f"{csv_path.name}#{line}",
            labels=(FER2013_LABELS[int(emotion)],),
            subject=f"fer{line}",
            row=where,
            data=encode_png(pixels),
        )
        identity = hashlib.sha256(pixels.tobytes()).digest()
        collector.candidates.append(_Candidate(line, where, _digest(cells), identity, record))
    return collector.finish(root, EXPRESSION_VOCABULARY, f"fer2013:{csv_path}")


# ---------------------------------------------------------------- registry and reading

LAYOUTS: dict[str, Callable[..., SourceScan]] = {
    "legend": scan_legend,
    "folders": scan_folders,
    "celeba": scan_celeba,
    "fer2013": scan_fer2013,
    "pattern": scan_pattern,
}


def scan_source(spec: str, **options: object) -> SourceScan:
    """Scan a source given as "LAYOUT:PATH" with the layout's keyword options."""
    layout, sep, location = spec.partition(":")
    if not sep or not location:
        raise SourceError(f"source spec {spec!r} is not LAYOUT:PATH")
    try:
        reader = LAYOUTS[layout]
    except KeyError:
        raise KeyError(
            f"unknown source layout {layout!r}; known layouts: {', '.join(sorted(LAYOUTS))}"
        ) from None
    return reader(location, **options)


DEFAULT_MAX_BYTES = 200 * 2**20


def read_record_bytes(root: str | os.PathLike, record: SourceRecord, *,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The record's bytes (inline, or its file re-checked to lie inside root); raises SourceError."""
    if record.data is not None:
        return record.data
    try:
        base = Path(root).resolve()
        target = (base / record.path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise SourceError(f"{record.path} cannot be resolved: {exc}", reason="not_a_file") from None
    if not target.is_relative_to(base):
        raise SourceError(f"{record.path} resolves outside {base}", reason="path_outside_root")
    try:
        # O_NOFOLLOW: the last component may not have become a symlink since resolve();
        # O_NONBLOCK: opening a FIFO must not hang an executor.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SourceError(f"{record.path} does not exist", reason="missing_file") from None
    except OSError as exc:
        raise SourceError(f"{record.path} cannot be opened: {exc}", reason="not_a_file") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(f"{record.path} is not a regular file", reason="not_a_file")
        if info.st_size > max_bytes:
            raise SourceError(f"{record.path} has {info.st_size} bytes > {max_bytes}",
                              reason="file_too_large")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise SourceError(f"{record.path} cannot be read: {exc}", reason="unreadable") from None
    if len(data) > max_bytes:
        raise SourceError(f"{record.path} grew past {max_bytes} bytes", reason="file_too_large")
    return data
