"""Expression vocabulary: canonical labels, synonyms, label vectors, attribute vocabularies."""
import pickle

import numpy as np
import pytest

from schemas.vocabulary import (
    EXPRESSION_VOCABULARY,
    EXPRESSIONS,
    UnknownLabel,
    Vocabulary,
    canonical_label,
)


def test_expressions_are_the_eight_in_order():
    assert EXPRESSIONS == (
        "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
    )
    assert EXPRESSION_VOCABULARY.labels == EXPRESSIONS
    assert not EXPRESSION_VOCABULARY.multi_label


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ANGER", "anger"),
        ("  Happiness\t", "happiness"),
        ("happy", "happiness"),
        ("HAPPY", "happiness"),
        ("sad", "sadness"),
        ("angry", "anger"),
        ("Surprised", "surprise"),
        ("disgusted", "disgust"),
        ("fearful", "fear"),
        ("afraid", "fear"),
        ("scared", "fear"),
        ("calm", "neutral"),
        ("None", "neutral"),
        ("no expression", "neutral"),
        ("no-expression", "neutral"),
        ("No__Expression", "neutral"),
        ("contemptuous", "contempt"),
        ("contempt", "contempt"),
    ],
)
def test_canonical_label_maps_synonyms(raw, expected):
    assert canonical_label(raw) == expected


@pytest.mark.parametrize("raw", ["joyous", "", "   ", "happ", "angerr", "smile", "neutral!"])
def test_unknown_labels_are_never_guessed(raw):
    with pytest.raises(UnknownLabel) as info:
        canonical_label(raw)
    message = str(info.value)
    assert repr(raw) in message
    for label in EXPRESSIONS:
        assert label in message
    assert info.value.raw == raw
    assert isinstance(info.value, ValueError)


def test_non_string_label_is_unknown():
    with pytest.raises(UnknownLabel):
        canonical_label(None)  # type: ignore[arg-type]
    with pytest.raises(UnknownLabel):
        canonical_label(3)  # type: ignore[arg-type]


def test_index_and_one_hot():
    vocab = EXPRESSION_VOCABULARY
    assert vocab.index("neutral") == 0
    assert vocab.index("Angry") == 6
    vector = vocab.one_hot("SURPRISED")
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, [0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(vocab.one_hot(["contempt"]), [0, 0, 0, 0, 0, 0, 0, 1])
    # Synonyms of one label are one label.
    np.testing.assert_array_equal(vocab.one_hot(["sad", "sadness"]), [0, 0, 1, 0, 0, 0, 0, 0])


def test_single_label_one_hot_refuses_zero_or_several_labels():
    with pytest.raises(ValueError, match="single-label"):
        EXPRESSION_VOCABULARY.one_hot([])
    with pytest.raises(ValueError, match="single-label"):
        EXPRESSION_VOCABULARY.one_hot(["happy", "sad"])
    with pytest.raises(UnknownLabel):
        EXPRESSION_VOCABULARY.one_hot("grin")


def test_attribute_vocabulary_keeps_names_and_matches_case_insensitively():
    vocab = Vocabulary.from_attributes(["5_o_Clock_Shadow", "Smiling", "Mouth_Slightly_Open"])
    assert vocab.multi_label
    assert vocab.labels == ("5_o_Clock_Shadow", "Smiling", "Mouth_Slightly_Open")
    assert vocab.canonical("smiling") == "Smiling"
    assert vocab.canonical("mouth slightly open") == "Mouth_Slightly_Open"
    assert vocab.index("5_O_CLOCK_SHADOW") == 0
    multi = vocab.one_hot(["SMILING", "mouth_slightly_open"])
    assert multi.dtype == np.float32
    np.testing.assert_array_equal(multi, [0, 1, 1])
    np.testing.assert_array_equal(vocab.one_hot([]), [0, 0, 0])
    # A single string is one label, not an iterable of characters.
    np.testing.assert_array_equal(vocab.one_hot("Smiling"), [0, 1, 0])
    with pytest.raises(UnknownLabel, match="Smiling"):
        vocab.canonical("Bald")


def test_vocabulary_validation():
    with pytest.raises(ValueError, match="collide"):
        Vocabulary.from_attributes(["Smiling", "smiling"])
    with pytest.raises(ValueError, match="names no label"):
        Vocabulary(name="v", labels=("a",), synonyms={"b": "c"})
    with pytest.raises(ValueError, match="ambiguous"):
        Vocabulary(name="v", labels=("a", "b"), synonyms={"a": "b"})
    with pytest.raises(ValueError, match="no labels"):
        Vocabulary(name="v", labels=())


def test_vocabulary_is_frozen_hashable_and_picklable():
    vocab = EXPRESSION_VOCABULARY
    with pytest.raises(AttributeError):
        vocab.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        vocab.synonyms["grin"] = "happiness"  # type: ignore[index]
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy == vocab and hash(copy) == hash(vocab)
    assert copy.canonical("happy") == "happiness"
    attrs = Vocabulary.from_attributes(["A", "B"])
    assert pickle.loads(pickle.dumps(attrs)).one_hot(["b"]).tolist() == [0.0, 1.0]
