"""etl/face.py on real sample photos: detection, landmarks, embeddings and the face policy."""
import os
import pickle

import cv2
import numpy as np
import pytest

from etl.face import (
    MODEL_FILES,
    SAME_PERSON_THRESHOLD,
    Box,
    FacePolicy,
    FaceRejected,
    OnMultiple,
    OnNone,
    detect_faces,
    embedding_distance,
    face_embedding,
    find_face,
    landmarks_5,
    landmarks_68,
    model_path,
)

GREY_PHOTOS = ["s024ccaeb_0001.jpg", "s0dd6c456_0001.jpg", "s27f25dab_0001.jpg"]  # 350x350 greyscale
SMALL_COLOUR = "se7420457_0006.jpg"  # 42x56 colour crop


def load(sample_dir, name):
    """A sample photo as RGB."""
    bgr = cv2.imread(str(sample_dir / "images" / name), cv2.IMREAD_COLOR)
    assert bgr is not None, name
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_model_registry():
    for name in MODEL_FILES:
        assert os.path.getsize(model_path(name)) > 1_000_000
    with pytest.raises(KeyError, match="shape_68"):
        model_path("shape_99")


@pytest.mark.parametrize("name", GREY_PHOTOS)
def test_face_found_on_real_photo(sample_dir, name):
    rgb = load(sample_dir, name)
    box = find_face(rgb)
    assert box.source == "hog"
    # a face crop: the face covers a large centred part of the photo
    assert box.area > 0.3 * rgb.shape[0] * rgb.shape[1]
    cx, cy = box.center
    assert abs(cx - 175) < 60 and abs(cy - 175) < 80
    assert detect_faces(rgb, upsample=0)[0].area == box.area


@pytest.mark.parametrize("name", GREY_PHOTOS)
def test_landmarks_geometry(sample_dir, name):
    rgb = load(sample_dir, name)
    box = find_face(rgb)
    p5, p68 = landmarks_5(rgb, box), landmarks_68(rgb, box)
    assert p5.shape == (5, 2) and p68.shape == (68, 2)
    assert p5.dtype == np.float32 and p68.dtype == np.float32
    # dlib 5-point order: 0,1 image-right eye (outer, inner), 2,3 image-left eye, 4 nose bottom
    assert p5[0, 0] > p5[1, 0] > p5[3, 0] > p5[2, 0]
    assert p5[4, 1] > p5[:4, 1].max()
    # the 5-point eye midpoints agree with the 68-point eye centres (36-41 = image-left eye)
    iod = np.linalg.norm(p68[42:48].mean(0) - p68[36:42].mean(0))
    assert np.linalg.norm(p5[2:4].mean(0) - p68[36:42].mean(0)) < 0.1 * iod
    assert np.linalg.norm(p5[0:2].mean(0) - p68[42:48].mean(0)) < 0.1 * iod
    assert p68[8, 1] > p68[57, 1] > p68[33, 1] > p68[27, 1]  # chin < mouth < nose < bridge (y down)


def test_small_colour_crop_is_detected(sample_dir):
    rgb = load(sample_dir, SMALL_COLOUR)
    assert rgb.shape[:2] == (56, 42) and not np.array_equal(rgb[..., 0], rgb[..., 1])
    box = find_face(rgb)
    assert box.source == "hog"
    # box in original pixels, overlapping most of the tiny image
    overlap = (min(box.right, 42) - max(box.left, 0)) * (min(box.bottom, 56) - max(box.top, 0))
    assert overlap > 0.5 * 42 * 56
    assert landmarks_68(rgb, box).shape == (68, 2)


@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_no_face_rejected_by_default_and_whole_image_accepted(kind):
    rng = np.random.default_rng(0)
    shape = (200, 160, 3)
    image = np.full(shape, 128, np.uint8) if kind == "flat" else rng.integers(0, 256, shape, np.uint8)
    with pytest.raises(FaceRejected) as err:
        find_face(image)
    assert err.value.reason == "no_face" and "no face detected in 160x200" in str(err.value)
    box = find_face(image, FacePolicy(on_none="whole_image"))
    assert box == Box(0, 0, 160, 200, source="whole_image")


def test_two_faces_largest_or_rejected(sample_dir):
    big = load(sample_dir, GREY_PHOTOS[0])
    small = cv2.resize(load(sample_dir, GREY_PHOTOS[1]), (250, 250), interpolation=cv2.INTER_AREA)
    small = cv2.copyMakeBorder(small, 50, 50, 0, 0, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    pair = np.hstack([small, big])  # smaller face on the left, larger on the right
    assert len(detect_faces(pair, upsample=0)) == 2
    box = find_face(pair)
    alone = find_face(big)
    assert box.center[0] > 250
    assert abs(box.center[0] - 250 - alone.center[0]) < 10 and abs(box.width - alone.width) < 10
    with pytest.raises(FaceRejected) as err:
        find_face(pair, FacePolicy(on_multiple=OnMultiple.REJECT))
    assert err.value.reason == "multiple_faces"


def test_too_small(sample_dir):
    rgb = load(sample_dir, GREY_PHOTOS[0])
    with pytest.raises(FaceRejected) as err:
        find_face(rgb, FacePolicy(min_face_size=400, on_none="whole_image"))
    assert err.value.reason == "too_small"
    with pytest.raises(FaceRejected) as err:
        find_face(np.full((20, 20, 3), 90, np.uint8), FacePolicy(on_none="whole_image"))
    assert err.value.reason == "too_small"


def test_policy_and_rejection_values():
    policy = FacePolicy(on_multiple="reject", on_none="whole_image")
    assert policy.on_multiple is OnMultiple.REJECT and policy.on_none is OnNone.WHOLE_IMAGE
    with pytest.raises(ValueError, match="largest"):
        FacePolicy(on_multiple="smallest")
    err = pickle.loads(pickle.dumps(FaceRejected("too_small", "face 10x10")))  # crosses Spark executors
    assert isinstance(err, ValueError) and err.reason == "too_small" and "face 10x10" in str(err)
    with pytest.raises(ValueError):
        FaceRejected("blurry", "x")


def test_embedding_identity_distance(sample_dir):
    a = load(sample_dir, GREY_PHOTOS[0])
    box = find_face(a)
    emb = face_embedding(a, box)
    assert emb.shape == (128,) and emb.dtype == np.float32
    np.testing.assert_allclose(face_embedding(a, landmarks_5(a, box)), emb, atol=1e-6)
    # the same photo rescaled is the same person; two different people are not
    a_small = cv2.resize(a, (250, 250), interpolation=cv2.INTER_AREA)
    assert embedding_distance(emb, face_embedding(a_small, find_face(a_small))) < 0.3
    others = [load(sample_dir, n) for n in GREY_PHOTOS[1:]]
    for other in others:
        assert embedding_distance(emb, face_embedding(other, find_face(other))) > SAME_PERSON_THRESHOLD
