"""Label vocabularies: the canonical expression labels, their synonyms, and label vectors.

A raw label from any source is canonicalised through an explicit synonym table: it is
stripped, case-folded, and runs of spaces, underscores and hyphens become one underscore.
A label that is neither a canonical name nor a listed synonym raises ``UnknownLabel``;
nothing is guessed (no fuzzy matching, no prefixes).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

# The eight expressions of RaFD / FER+ in the order used for label vectors.
EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)

# Synonym -> canonical expression. Keys are written in normalised form (see normalise_key).
# Dataset-specific codes (KDEF "AF", JAFFE "FE", ...) belong in a dataset's own Vocabulary.
EXPRESSION_SYNONYMS: Mapping[str, str] = MappingProxyType({
    "calm": "neutral",
    "none": "neutral",
    "no_expression": "neutral",
    "happy": "happiness",
    "joy": "happiness",
    "joyful": "happiness",
    "sad": "sadness",
    "sorrow": "sadness",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "disgusted": "disgust",
    "angry": "anger",
    "contemptuous": "contempt",
})

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_key(raw: str) -> str:
    """Lookup key of a raw label: stripped, case-folded, separator runs replaced by '_'."""
    return _SEPARATORS.sub("_", raw.strip().casefold()).strip("_")


class UnknownLabel(ValueError):
    """A raw label that is neither a canonical label nor a known synonym."""

    def __init__(self, raw: object, known: Iterable[str], vocabulary: str = "expression"):
        self.raw = raw
        self.known = tuple(known)
        self.vocabulary = vocabulary
        super().__init__(
            f"unknown {vocabulary} label {raw!r}; known labels: {', '.join(self.known)}"
        )


@dataclass(frozen=True)
class Vocabulary:
    """An ordered label set with case-insensitive synonyms; single- or multi-label."""

    name: str
    labels: tuple[str, ...]
    synonyms: Mapping[str, str] = field(default_factory=dict)
    multi_label: bool = False
    _lookup: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        if not labels:
            raise ValueError(f"vocabulary {self.name!r} has no labels")
        lookup: dict[str, str] = {}
        for label in labels:
            if not isinstance(label, str) or not normalise_key(label):
                raise ValueError(f"vocabulary {self.name!r}: invalid label {label!r}")
            key = normalise_key(label)
            if key in lookup:
                raise ValueError(
                    f"vocabulary {self.name!r}: labels {lookup[key]!r} and {label!r} collide"
                )
            lookup[key] = label
        for synonym, target in self.synonyms.items():
            if target not in labels:
                raise ValueError(
                    f"vocabulary {self.name!r}: synonym {synonym!r} -> {target!r} names no label"
                )
            key = normalise_key(synonym)
            if lookup.get(key, target) != target:
                raise ValueError(
                    f"vocabulary {self.name!r}: synonym {synonym!r} is ambiguous "
                    f"({lookup[key]!r} vs {target!r})"
                )
            lookup[key] = target
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "synonyms", MappingProxyType(dict(self.synonyms)))
        object.__setattr__(self, "_lookup", MappingProxyType(lookup))

    @classmethod
    def from_attributes(cls, names: Iterable[str], *, name: str = "attributes") -> Vocabulary:
        """Multi-label vocabulary of attribute names (kept as given, matched case-insensitively)."""
        return cls(name=name, labels=tuple(names), synonyms={}, multi_label=True)

    def __hash__(self) -> int:
        return hash((self.name, self.labels, tuple(sorted(self.synonyms.items())), self.multi_label))

    def __reduce__(self):
        # mappingproxy does not pickle; Spark ships vocabularies to executors.
        return (type(self), (self.name, self.labels, dict(self.synonyms), self.multi_label))

    def __len__(self) -> int:
        return len(self.labels)

    def canonical(self, raw: str) -> str:
        """Canonical label for a raw label or synonym; raises UnknownLabel."""
        if not isinstance(raw, str):
            raise UnknownLabel(raw, self.labels, self.name)
        try:
            return self._lookup[normalise_key(raw)]
        except KeyError:
            raise UnknownLabel(raw, self.labels, self.name) from None

    def index(self, label: str) -> int:
        """Position of a (raw or canonical) label in the label vector."""
        return self.labels.index(self.canonical(label))

    def one_hot(self, labels: str | Iterable[str]) -> np.ndarray:
        """float32 label vector: one-hot (exactly one label) or multi-hot when multi_label."""
        names = [labels] if isinstance(labels, str) else list(labels)
        positions = sorted({self.index(label) for label in names})
        if not self.multi_label and len(positions) != 1:
            raise ValueError(
                f"vocabulary {self.name!r} is single-label; got {len(positions)} labels: {names!r}"
            )
        vector = np.zeros(len(self.labels), dtype=np.float32)
        vector[positions] = 1.0
        return vector


EXPRESSION_VOCABULARY = Vocabulary(
    name="expression", labels=EXPRESSIONS, synonyms=EXPRESSION_SYNONYMS, multi_label=False
)


def canonical_label(raw: str) -> str:
    """Canonical expression label for a raw label or synonym; raises UnknownLabel."""
    return EXPRESSION_VOCABULARY.canonical(raw)
