"""etl/augment.py: flips keep landmark meaning, warps move landmarks with the pixels, explicit RNGs."""
import cv2
import numpy as np
import pytest

from etl.align import align_face, find_face
from etl.augment import (
    MIRROR_PERMUTATIONS,
    AugmentConfig,
    augment,
    color_jitter,
    hflip,
    random_affine,
)
from etl.face import landmarks_68

PHOTO = "s27f25dab_0001.jpg"  # 350x350 greyscale


@pytest.fixture(scope="module")
def aligned(sample_dir):
    """A real aligned 128 px face (a greyscale photo as RGB) with its 68 landmarks."""
    bgr = cv2.imread(str(sample_dir / "images" / PHOTO), cv2.IMREAD_COLOR)
    return align_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size=128)


def test_mirror_permutations_are_involutions():
    for count, perm in MIRROR_PERMUTATIONS.items():
        assert sorted(perm) == list(range(count))
        assert np.array_equal(perm[perm], np.arange(count))
    perm = MIRROR_PERMUTATIONS[68]
    assert perm[0] == 16 and perm[8] == 8 and perm[17] == 26 and perm[21] == 22
    assert perm[36] == 45 and perm[39] == 42 and perm[40] == 47 and perm[41] == 46
    assert perm[31] == 35 and perm[33] == 33 and perm[48] == 54 and perm[57] == 57 and perm[60] == 64
    with pytest.raises(KeyError, match="68"):
        hflip(np.zeros((8, 8, 3), np.uint8), np.zeros((7, 2), np.float32))


def test_hflip_twice_is_identity(aligned):
    image, pts = hflip(*hflip(aligned.image, aligned.landmarks))
    assert np.array_equal(image, aligned.image)
    assert pts.dtype == np.float32
    np.testing.assert_allclose(pts, aligned.landmarks, rtol=0, atol=2e-5)  # float32 rounding only
    exact = aligned.landmarks.astype(np.float64)
    assert np.array_equal(hflip(*hflip(aligned.image, exact))[1], exact)


def test_hflip_keeps_landmark_meaning(aligned):
    image, pts = hflip(aligned.image, aligned.landmarks)
    # 36-41 is still the eye on the image's left, jaw still starts on the left, mouth corners too
    assert pts[36:42, 0].mean() < 64 < pts[42:48, 0].mean()
    assert pts[0, 0] < pts[16, 0] and pts[48, 0] < pts[54, 0] and pts[17, 0] < pts[26, 0]
    # eye corners keep their order: 36 outer < 39 inner < 42 inner < 45 outer
    assert pts[36, 0] < pts[39, 0] < pts[42, 0] < pts[45, 0]
    # and dlib, fitting the flipped image from scratch, agrees point by point
    refit = landmarks_68(image, find_face(image))
    assert np.median(np.linalg.norm(refit - pts, axis=1)) < 2.5


def _dots(points, shape=(128, 128)):
    """A black image with a small Gaussian dot at each point."""
    image = np.zeros(shape, np.float32)
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _centroid(image, near):
    """Intensity-weighted centroid of the image in a 11x11 window around ``near``."""
    x0, y0 = np.rint(near).astype(int)
    win = image[y0 - 5 : y0 + 6, x0 - 5 : x0 + 6].astype(np.float64)
    ys, xs = np.mgrid[y0 - 5 : y0 + 6, x0 - 5 : x0 + 6]
    return np.array([(win * xs).sum(), (win * ys).sum()]) / win.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_affine_moves_landmarks_with_the_pixels(aligned, seed):
    pts = aligned.landmarks[[36, 45, 30, 48, 54, 57]]  # eye corners, nose, mouth
    image = _dots(pts)
    rng = np.random.default_rng(seed)
    warped, moved = random_affine(image, pts, rng, 10, scale_range=(0.9, 1.1), max_shift=0.05)
    assert np.abs(moved - pts).max() > 1.0  # something actually moved
    for p in moved:
        assert np.linalg.norm(_centroid(warped, p) - p) < 0.3


def test_hflip_moves_landmarks_with_the_pixels(aligned):
    marked = [36, 39, 30, 48]  # dots at the image-left eye's outer/inner corners, nose tip, mouth corner
    image, flipped = hflip(_dots(aligned.landmarks[marked]), aligned.landmarks)
    # the dots are now at the mirrored points: the other eye's corners and the other mouth corner
    for p in flipped[[45, 42, 30, 54]]:
        assert np.linalg.norm(_centroid(image, p) - p) < 0.3


def test_random_affine_is_reproducible(aligned):
    a = random_affine(aligned.image, aligned.landmarks, np.random.default_rng(7))
    b = random_affine(aligned.image, aligned.landmarks, np.random.default_rng(7))
    c = random_affine(aligned.image, aligned.landmarks, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_color_jitter(aligned):
    rng = np.random.default_rng(3)
    assert np.array_equal(color_jitter(aligned.image, rng, 0.0, 0.0, 0.0), aligned.image)
    # a grey photo stays grey (saturation is a no-op), and brightness alone scales the mean
    out = color_jitter(aligned.image, np.random.default_rng(4), 0.3, 0.2, 0.2)
    assert out.dtype == np.uint8 and out.shape == aligned.image.shape
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    bright = color_jitter(aligned.image, np.random.default_rng(5), 0.3, 0.0, 0.0)
    mid = (aligned.image > 40) & (aligned.image < 180)
    ratio = bright[mid] / aligned.image[mid].astype(np.float64)
    assert 0.7 <= ratio.mean() <= 1.3 and abs(ratio.mean() - 1) > 0.01 and ratio.std() < 0.02
    # saturation changes a colour image's chroma, not its luminance
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, 80, 40
    desat = color_jitter(colour, np.random.default_rng(6), 0.0, 0.0, 0.9)
    assert np.ptp(desat[0, 0].astype(int)) != np.ptp(colour[0, 0].astype(int))
    # a 2-D greyscale image is accepted
    assert color_jitter(aligned.image[..., 0], rng).shape == (128, 128)


def test_augment_reproducible_and_configurable(aligned):
    config = AugmentConfig()
    a = augment(aligned.image, aligned.landmarks, np.random.default_rng(11), config)
    b = augment(aligned.image, aligned.landmarks, np.random.default_rng(11), config)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    off = AugmentConfig(hflip_p=0.0, affine_p=0.0, color_p=0.0)
    image, pts = augment(aligned.image, aligned.landmarks, np.random.default_rng(11), off)
    assert np.array_equal(image, aligned.image) and np.array_equal(pts, aligned.landmarks)
    flip_only = AugmentConfig(hflip_p=1.0, affine_p=0.0, color_p=0.0)
    image, pts = augment(aligned.image, aligned.landmarks, np.random.default_rng(0), flip_only)
    expected = hflip(aligned.image, aligned.landmarks)
    assert np.array_equal(image, expected[0]) and np.array_equal(pts, expected[1])
    # images without landmarks are augmented too
    assert augment(aligned.image, None, np.random.default_rng(1), config)[1] is None
    with pytest.raises(ValueError):
        AugmentConfig(hflip_p=1.5)
