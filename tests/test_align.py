"""etl/align.py on real sample photos: template geometry, sizes, landmarks, matrix and paste-back."""
import cv2
import numpy as np
import pytest

from etl.align import (
    TEMPLATE_5,
    align_face,
    face_mask,
    paste_back,
    similarity_transform,
    template_eye_centers,
    template_points,
    transform_points,
)
from etl.face import FacePolicy, FaceRejected, find_face, landmarks_68

GREY_PHOTOS = ["s024ccaeb_0001.jpg", "s0dd6c456_0001.jpg", "s27f25dab_0001.jpg"]  # 350x350 greyscale
SMALL_COLOUR = "se7420457_0006.jpg"  # 42x56 colour crop, detected after upscaling
UNDETECTED_COLOUR = "s7846074d_0015.jpg"  # 115x128 colour crop HOG misses: needs whole_image
FAILED_FIT = "s7846074d_0040.jpg"  # 110x147 near-profile crop: no detection, whole_image fit fails


def load(sample_dir, name):
    """A sample photo as RGB."""
    bgr = cv2.imread(str(sample_dir / "images" / name), cv2.IMREAD_COLOR)
    assert bgr is not None, name
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def eye_centers(landmarks68):
    """(image-left eye, image-right eye) centres of 68 landmarks."""
    return np.stack([landmarks68[36:42].mean(0), landmarks68[42:48].mean(0)])


def test_template_is_symmetric_and_ordered():
    pts = template_points(128)
    assert pts.shape == (5, 2)
    # mirror of x about the crop centre swaps the two eyes (0<->2, 1<->3) and keeps the nose
    mirrored = pts.copy()
    mirrored[:, 0] = 127 - mirrored[:, 0]
    np.testing.assert_allclose(mirrored[[2, 3, 0, 1, 4]], pts, atol=1e-4)
    assert pts[0, 0] > pts[1, 0] > 63.5 > pts[3, 0] > pts[2, 0]
    assert 0.3 < TEMPLATE_5[:4, 1].mean() < 0.45 and TEMPLATE_5[4, 1] > 0.55
    # scale-consistent across sizes (pixel centres at integers)
    np.testing.assert_allclose((template_points(64) + 0.5) * 4 - 0.5, template_points(256), atol=1e-4)


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 300, (5, 2))
    angle, scale, shift = np.deg2rad(23.0), 0.41, np.array([-17.0, 40.5])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-7)
    # never a reflection, even for mirrored targets
    mirrored = dst * np.array([-1.0, 1.0])
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("name", GREY_PHOTOS + [SMALL_COLOUR])
def test_aligned_eyes_land_on_template(sample_dir, name, size):
    face = align_face(load(sample_dir, name), size=size)
    assert face.image.shape == (size, size, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    assert face.matrix.shape == (2, 3) and face.box.source == "hog"
    assert 0.3 < face.valid_fraction <= 1.0 and face.eye_error < 0.1
    eyes = eye_centers(face.landmarks)
    # within a few pixels (3 px at 128) of the template eye centres, and level
    assert np.abs(eyes - template_eye_centers(size)).max() < 0.025 * size
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.02 * size
    # the whole face is inside the crop: jaw, brows and chin
    assert face.landmarks.min() > 0 and face.landmarks.max() < size - 1


def test_valid_fraction_counts_the_photo_inside_the_crop(sample_dir):
    rgb = load(sample_dir, GREY_PHOTOS[0])
    tight = align_face(rgb, size=128)
    padded = align_face(cv2.copyMakeBorder(rgb, 150, 150, 150, 150, cv2.BORDER_CONSTANT), size=128)
    assert tight.valid_fraction < 0.9 and padded.valid_fraction == 1.0
    # the same face lands in the same place (the detector box differs a little with the context)
    assert np.median(np.linalg.norm(padded.landmarks - tight.landmarks, axis=1)) < 1.5


def test_landmarks_follow_the_matrix(sample_dir):
    rgb = load(sample_dir, GREY_PHOTOS[0])
    face = align_face(rgb, size=128)
    original = landmarks_68(rgb, find_face(rgb))
    np.testing.assert_allclose(transform_points(original, face.matrix), face.landmarks, atol=1e-3)
    # the same landmarks up to scale at every size
    big = align_face(rgb, size=256)
    np.testing.assert_allclose((face.landmarks + 0.5) * 2 - 0.5, big.landmarks, atol=1e-3)
    # and the pixels moved with them: refitting on the aligned 256 crop lands close by
    refit = landmarks_68(big.image, find_face(big.image))
    assert np.median(np.linalg.norm(refit - big.landmarks, axis=1)) < 4.0


def test_whole_image_policy_aligns_an_undetected_crop(sample_dir):
    rgb = load(sample_dir, UNDETECTED_COLOUR)
    with pytest.raises(FaceRejected) as err:
        align_face(rgb)
    assert err.value.reason == "no_face"
    face = align_face(rgb, size=128, policy=FacePolicy(on_none="whole_image"))
    assert face.box.source == "whole_image" and face.image.shape == (128, 128, 3)
    assert np.abs(eye_centers(face.landmarks) - template_eye_centers(128)).max() < 0.04 * 128
    assert face.eye_error < 0.1
    assert face.valid_fraction < 1.0  # a tight crop: the template margin runs off the photo


def test_eye_error_flags_a_failed_fit(sample_dir):
    face = align_face(load(sample_dir, FAILED_FIT), policy=FacePolicy(on_none="whole_image"))
    assert face.eye_error > 0.3


def test_paste_back_identity_reproduces_original(sample_dir):
    rgb = load(sample_dir, GREY_PHOTOS[1])
    face = align_face(rgb, size=256)
    pasted = paste_back(rgb, face.image, face.matrix)
    assert pasted.shape == rgb.shape and pasted.dtype == np.uint8
    # where the mask is: paste a white face onto a black photo
    alpha = paste_back(np.zeros_like(rgb), np.full_like(face.image, 255), face.matrix)[..., 0] / 255.0
    inside, outside = alpha > 0.99, alpha == 0
    assert inside.mean() > 0.25 and outside.mean() > 0.1
    diff = np.abs(pasted.astype(int) - rgb.astype(int))
    assert diff[inside].mean() < 3.0
    assert np.array_equal(pasted[outside], rgb[outside])


def test_paste_back_puts_the_face_where_it_came_from(sample_dir):
    rgb = load(sample_dir, GREY_PHOTOS[2])
    face = align_face(rgb, size=128)
    marked = face.image.copy()
    x, y = np.rint(face.landmarks[30]).astype(int)  # nose tip
    cv2.circle(marked, (int(x), int(y)), 2, (255, 0, 0), -1)
    pasted = paste_back(rgb, marked, face.matrix)
    red = (pasted[..., 0].astype(int) - pasted[..., 1]) > 100
    found = np.argwhere(red).mean(axis=0)[::-1]
    expected = landmarks_68(rgb, find_face(rgb))[30]
    assert np.linalg.norm(found - expected) < 3.0


def test_face_mask_is_feathered():
    mask = face_mask(128, feather=0.08)
    assert mask.shape == (128, 128) and mask.dtype == np.float32
    assert mask[70, 64] == pytest.approx(1.0, abs=1e-3) and mask[0, 0] == 0.0
    assert 0.05 < mask[70, 64 + 40] < 0.95 or 0.05 < mask[70, 64 + 38] < 0.95  # soft edge on the side
