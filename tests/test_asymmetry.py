"""Asymmetry measures on synthetic 68-point faces whose asymmetry is known by construction."""
import numpy as np
import pytest

from etl.augment import MIRROR_PERMUTATIONS
from training.asymmetry import MEASURES, asymmetry_magnitude, measure_asymmetry

IOD = 60.0  # eye centres at x = 70 and 130


def symmetric_face() -> np.ndarray:
    """A frontal face in image pixels (y down), exactly mirror-symmetric about x = 100."""
    theta = np.pi - np.arange(17) * np.pi / 16
    jaw = np.stack([100 + 70 * np.cos(theta), 100 + 90 * np.sin(theta)], axis=1)
    right_brow = [(55, 68), (63, 64), (71, 62), (79, 63), (87, 66)]
    left_brow = [(200 - x, y) for x, y in reversed(right_brow)]
    nose = [(100, 90), (100, 100), (100, 110), (100, 120), (88, 128), (94, 130), (100, 131), (106, 130), (112, 128)]
    right_eye = [(55, 95), (63, 90), (77, 90), (85, 95), (77, 100), (63, 100)]
    left_eye = [(115, 95), (123, 90), (137, 90), (145, 95), (137, 100), (123, 100)]
    mouth = [(75, 150), (83, 145), (92, 142), (100, 143), (108, 142), (117, 145), (125, 150), (117, 156),
             (108, 159), (100, 160), (92, 159), (83, 156), (80, 150), (92, 147), (100, 147), (108, 147),
             (120, 150), (108, 153), (100, 154), (92, 153)]
    pts = np.concatenate([jaw, right_brow, left_brow, nose, right_eye, left_eye, mouth]).astype(np.float64)
    assert pts.shape == (68, 2)
    mirrored = pts[MIRROR_PERMUTATIONS[68]] * [-1, 1] + [200, 0]
    return (pts + mirrored) / 2


def _approx(measures, **expected):
    for name in MEASURES:
        want = expected.get(name, 1.0 if name == "eye_aperture_ratio" else 0.0)
        assert float(measures[name]) == pytest.approx(want, abs=1e-9), name


def test_a_symmetric_face_measures_symmetric():
    _approx(measure_asymmetry(symmetric_face()))


def test_left_mouth_corner_raised_by_a_known_amount():
    face = symmetric_face()
    face[54, 1] -= 6.0  # the subject's left corner (image right), 6 px up = 0.1 IOD
    _approx(measure_asymmetry(face), mouth_corner_height_diff=6.0 / IOD)


def test_right_mouth_corner_pulled_outwards():
    face = symmetric_face()
    face[48, 0] -= 3.0  # the subject's right corner, 3 px further from the midline
    _approx(measure_asymmetry(face), mouth_excursion_diff=-3.0 / IOD)


def test_left_eye_opened_wider():
    face = symmetric_face()
    face[[43, 44], 1] -= 5.0  # upper lid of the subject's left eye: aperture 10 -> 15 px
    # the eye centre moves up by 5/3 px: the left brow-to-eye height shrinks by that, the IOD grows a little
    iod = np.hypot(IOD, 5.0 / 3)
    _approx(measure_asymmetry(face), eye_aperture_ratio=1.5, brow_height_diff=-(5.0 / 3) / iod)


def test_right_brow_raised():
    face = symmetric_face()
    face[17:22, 1] -= 9.0
    _approx(measure_asymmetry(face), brow_height_diff=-9.0 / IOD)


def test_invariant_to_scale_rotation_and_position_and_batched():
    face = symmetric_face()
    face[54, 1] -= 6.0
    face[[37, 38], 1] -= 2.0
    angle = np.deg2rad(25)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (face - 100) @ rot.T * 0.37 + [31, -12]
    batch = measure_asymmetry(np.stack([face, moved]))
    for name in MEASURES:
        assert batch[name].shape == (2,)
        assert batch[name][0] == pytest.approx(batch[name][1], rel=1e-9, abs=1e-12), name


def test_a_mirrored_photo_swaps_the_sides():
    face = symmetric_face()
    face[54, 1] -= 6.0
    face[[43, 44], 1] -= 5.0
    face[48, 0] -= 3.0
    mirrored = face[MIRROR_PERMUTATIONS[68]] * [-1, 1] + [199, 0]
    a, b = measure_asymmetry(face), measure_asymmetry(mirrored)
    assert float(b["eye_aperture_ratio"]) == pytest.approx(1 / float(a["eye_aperture_ratio"]))
    for name in ("mouth_corner_height_diff", "mouth_excursion_diff", "brow_height_diff"):
        assert float(b[name]) == pytest.approx(-float(a[name]), abs=1e-12), name
    mag_a, mag_b = asymmetry_magnitude(a), asymmetry_magnitude(b)
    for name in MEASURES:
        assert float(mag_a[name]) == pytest.approx(float(mag_b[name]), abs=1e-12)
    assert float(mag_a["eye_aperture_ratio"]) == pytest.approx(1 - 1 / 1.5)
    assert all(float(v) == 0 for v in asymmetry_magnitude(measure_asymmetry(symmetric_face())).values())


def test_closed_eye_and_bad_input():
    face = symmetric_face()
    face[[43, 44], 1] = face[[47, 46], 1]  # left eye shut
    measures = measure_asymmetry(face)
    assert float(measures["eye_aperture_ratio"]) == 0.0
    assert float(asymmetry_magnitude(measures)["eye_aperture_ratio"]) == 1.0
    with pytest.raises(ValueError, match="68, 2"):
        measure_asymmetry(np.zeros((5, 2)))
    with pytest.raises(KeyError, match="known"):
        asymmetry_magnitude({"smile": np.zeros(1)})
