"""Safe decoding of untrusted image bytes: formats by magic, bombs, truncation, modes, EXIF."""
import hashlib
import io
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from etl.decode import (
    REJECT_REASONS,
    ImageRejected,
    content_hash,
    decode_image,
    encode_png,
    pixel_hash,
    sniff_format,
)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_chunk_types(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kinds.append(data[offset + 4:offset + 8])
        offset += 12 + length
    return kinds


def bomb_png(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose IHDR declares width x height 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def reason_of(data: bytes, **options) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **options)
    assert info.value.reason in REJECT_REASONS
    return info.value.reason


def composite(c: int, a: int) -> int:
    return round(c * a / 255 + 255 * (1 - a / 255))


# ---------------------------------------------------------------- formats by magic


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_round_trip_exactly(fmt):
    pixels = noise(12, 17)
    options = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(pixels), fmt, **options))
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    assert out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, pixels)


def test_jpeg_and_gif_decode_to_rgb():
    flat = np.full((16, 24, 3), (200, 40, 90), np.uint8)
    jpeg = decode_image(encode(Image.fromarray(flat), "JPEG", quality=95))
    assert jpeg.shape == (16, 24, 3)
    assert np.abs(jpeg.astype(int) - flat).max() <= 3
    gif = decode_image(encode(Image.fromarray(flat), "GIF"))
    np.testing.assert_array_equal(gif, flat)


def test_png_saved_under_a_jpg_name_decodes_by_magic(tmp_path):
    pixels = noise(5, 7, seed=1)
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(Image.fromarray(pixels), "PNG"))
    assert sniff_format(path.read_bytes()) == "PNG"
    np.testing.assert_array_equal(decode_image(path.read_bytes()), pixels)


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("patient id 1234, not a photo\n")
    assert reason_of(path.read_bytes()) == "not_an_image"


def test_empty_and_unsupported_and_corrupt_inputs():
    assert reason_of(b"") == "empty_file"
    assert reason_of(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40) == "unsupported_format"
    assert reason_of(b"%PDF-1.7\n") == "not_an_image"
    assert reason_of(b"GIF89a" + b"\x01" * 20) == "decode_error"
    assert reason_of(b"BM" + b"\x00" * 60) == "decode_error"


def test_bytearray_accepted_and_str_refused():
    data = encode(Image.new("RGB", (2, 2), (1, 2, 3)), "PNG")
    assert decode_image(bytearray(data))[1, 1].tolist() == [1, 2, 3]
    with pytest.raises(TypeError):
        decode_image("not bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- truncation


def test_jpeg_cut_in_half_is_truncated():
    data = encode(Image.fromarray(noise(64, 64)), "JPEG", quality=90)
    decode_image(data)  # the whole file is fine
    assert reason_of(data[: len(data) // 2]) == "truncated"


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_cut_in_half_are_truncated(fmt):
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    assert reason_of(data[: len(data) // 2]) == "truncated"


# ---------------------------------------------------------------- decompression bombs


def test_declared_size_is_checked_before_decoding():
    data = bomb_png(7000, 7000)  # 49 M declared pixels in a tiny file
    assert len(data) < 100
    with pytest.raises(ImageRejected) as info:
        decode_image(data)  # default budget 40 M
    assert info.value.reason == "too_many_pixels"
    assert "7000x7000" in str(info.value)


def test_compressible_real_image_over_a_small_budget():
    data = encode(Image.new("L", (2000, 1500)), "PNG")
    assert len(data) < 20_000
    assert reason_of(data, max_pixels=1_000_000) == "too_many_pixels"
    assert decode_image(data, max_pixels=3_000_000).shape == (1500, 2000, 3)


def test_pillow_bomb_error_and_warning_become_rejections_without_global_changes():
    limit_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    # 900 M pixels: over twice Pillow's limit -> DecompressionBombError inside Image.open.
    assert reason_of(bomb_png(30000, 30000), max_pixels=10**12) == "too_many_pixels"
    # 100 M pixels: over Pillow's limit only -> DecompressionBombWarning, made an error here.
    assert reason_of(bomb_png(10000, 10000), max_pixels=10**12) == "too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert list(warnings.filters) == filters_before


# ---------------------------------------------------------------- modes


def test_grey_is_replicated_to_rgb():
    grey = np.array([[0, 77, 255]], np.uint8)
    out = decode_image(encode(Image.fromarray(grey, "L"), "PNG"))
    assert out.tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]


def test_one_bit_becomes_0_and_255():
    image = Image.new("1", (3, 1), 0)
    image.putpixel((1, 0), 1)
    for fmt in ("PNG", "BMP", "TIFF"):
        out = decode_image(encode(image, fmt))
        assert out.tolist() == [[[0, 0, 0], [255, 255, 255], [0, 0, 0]]], fmt


def palette_image() -> Image.Image:
    image = Image.new("P", (3, 1))
    image.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (253 * 3))
    image.putdata([0, 1, 2])
    return image


def test_palette_without_transparency():
    out = decode_image(encode(palette_image(), "PNG"))
    assert out.tolist() == [[[10, 20, 30], [200, 100, 0], [0, 0, 255]]]


def test_palette_with_transparency_is_composited_over_white():
    # PNG tRNS: entry 0 opaque, entry 1 half transparent, entry 2 fully transparent.
    out = decode_image(encode(palette_image(), "PNG", transparency=bytes([255, 128, 0])))
    half = [composite(c, 128) for c in (200, 100, 0)]
    assert out.tolist() == [[[10, 20, 30], half, [255, 255, 255]]]
    # GIF transparency index.
    gif = decode_image(encode(palette_image(), "GIF", transparency=2))
    assert gif.tolist() == [[[10, 20, 30], [200, 100, 0], [255, 255, 255]]]


def test_rgba_and_la_are_composited_over_white():
    rgba = np.array([[[200, 100, 0, 0], [200, 100, 0, 255], [200, 100, 0, 128]]], np.uint8)
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.tolist() == [[[255, 255, 255], [200, 100, 0], [composite(200, 128), composite(100, 128), 127]]]
    assert composite(200, 128) == 227  # not the dropped-alpha value 200
    la = np.array([[[0, 128], [90, 255], [90, 0]]], np.uint8)
    out = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    assert out.tolist() == [[[127] * 3, [90] * 3, [255] * 3]]


SIXTEEN = np.array([[0, 255, 256, 32768, 65280, 65535]], np.uint16)
SIXTEEN_EXPECTED = [0, 0, 1, 128, 255, 255]


def test_sixteen_bit_grey_png_is_shifted_not_clipped():
    data = encode(Image.fromarray(SIXTEEN), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    assert out[..., 0].tolist() == [SIXTEEN_EXPECTED]
    assert (out[..., 0] == out[..., 2]).all()


def test_sixteen_bit_big_endian_tiff_and_mode_i():
    big = Image.frombytes("I;16B", (6, 1), SIXTEEN.astype(">u2").tobytes())
    data = encode(big, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert decode_image(data)[..., 1].tolist() == [SIXTEEN_EXPECTED]
    mode_i = Image.fromarray(SIXTEEN.astype(np.int32), "I")
    assert decode_image(encode(mode_i, "TIFF"))[..., 0].tolist() == [SIXTEEN_EXPECTED]
    too_wide = Image.fromarray(np.array([[0, 70000]], np.int32), "I")
    assert reason_of(encode(too_wide, "TIFF")) == "unsupported_mode"


def test_float_images_are_unsupported():
    image = Image.fromarray(np.array([[0.0, 0.5]], np.float32), "F")
    assert reason_of(encode(image, "TIFF")) == "unsupported_mode"


def test_cmyk_tiff_exact():
    image = Image.new("CMYK", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 0))
    out = decode_image(encode(image, "TIFF"))
    assert out.tolist() == [[[0, 255, 255], [0, 0, 0], [255, 255, 255]]]


def test_adobe_inverted_cmyk_jpeg():
    image = Image.new("CMYK", (32, 16), (255, 0, 0, 0))  # cyan
    for x in range(16, 32):
        for y in range(16):
            image.putpixel((x, y), (0, 255, 0, 0))  # magenta
    data = encode(image, "JPEG", quality=100)
    assert b"Adobe" in data  # Pillow stores CMYK inverted with an Adobe APP14 marker
    out = decode_image(data).astype(int)
    assert np.abs(out[8, 4] - [0, 255, 255]).max() <= 8
    assert np.abs(out[8, 27] - [255, 0, 255]).max() <= 8


def test_multi_frame_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data)
    assert (out == [255, 0, 0]).all()


# ---------------------------------------------------------------- EXIF


def marked(width: int = 64, height: int = 32) -> Image.Image:
    """Black image with a white 16x16 block at the stored top-left corner."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:16, :16] = 255
    return Image.fromarray(pixels)


def orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_6_is_applied_exactly_once(fmt):
    data = encode(marked(), fmt, exif=orientation(6))
    out = decode_image(data)
    # Orientation 6 = rotate 90 degrees clockwise: 64 wide x 32 high -> 32 wide x 64 high,
    # the stored top-left block is shown at the top-right.
    assert out.shape == (64, 32, 3)
    assert out[4, 27].min() >= 240
    assert out[4, 4].max() <= 15
    assert out[60, 27].max() <= 15
    assert out[60, 4].max() <= 15
    # The result carries no orientation any more: re-encoding and decoding changes nothing.
    np.testing.assert_array_equal(decode_image(encode_png(out)), out)


def test_orientation_1_and_missing_exif_leave_pixels_alone():
    plain = decode_image(encode(marked(), "PNG"))
    tagged = decode_image(encode(marked(), "PNG", exif=orientation(1)))
    assert plain.shape == (32, 64, 3)
    np.testing.assert_array_equal(plain, tagged)
    assert plain[4, 4].min() == 255


def test_gps_exif_never_reaches_the_output():
    exif = Image.Exif()
    exif[0x010E] = "PATIENT-DESCRIPTION-MARKER"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 22.0, 1.5)
    source = encode(Image.new("RGB", (8, 8), (30, 60, 90)), "JPEG", exif=exif)
    assert b"PATIENT-DESCRIPTION-MARKER" in source
    assert Image.open(io.BytesIO(source)).getexif().get_ifd(0x8825)[1] == "N"
    out = decode_image(source)
    assert type(out) is np.ndarray
    png = encode_png(out)
    assert set(png_chunk_types(png)) <= {b"IHDR", b"IDAT", b"IEND"}
    assert b"PATIENT-DESCRIPTION-MARKER" not in png
    assert len(Image.open(io.BytesIO(png)).getexif()) == 0


# ---------------------------------------------------------------- hashes and PNG


def test_content_hash_is_sha256_of_the_bytes():
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_pixel_hash_dedupes_a_photo_reencoded_as_png():
    jpeg = encode(Image.fromarray(noise(20, 30, seed=3)), "JPEG", quality=80)
    decoded = decode_image(jpeg)
    png = encode_png(decoded)
    assert content_hash(png) != content_hash(jpeg)
    assert pixel_hash(decode_image(png)) == pixel_hash(decoded)


def test_pixel_hash_covers_shape_and_pixels():
    flat = np.arange(36, dtype=np.uint8)
    assert pixel_hash(flat.reshape(2, 6, 3)) != pixel_hash(flat.reshape(6, 2, 3))
    changed = flat.copy()
    changed[5] += 1
    assert pixel_hash(flat.reshape(2, 6, 3)) != pixel_hash(changed.reshape(2, 6, 3))
    # Non-contiguous views hash like their contiguous copies.
    image = flat.reshape(2, 6, 3)
    view = image[:, ::2]
    assert pixel_hash(view) == pixel_hash(np.ascontiguousarray(view))
    with pytest.raises(ValueError):
        pixel_hash(image.astype(np.float32))


def test_encode_png_writes_rgb_in_the_right_channel_order():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    rgb[1, 2] = (0, 128, 255)
    png = encode_png(rgb)
    assert png_chunk_types(png) == [b"IHDR", b"IDAT", b"IEND"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), rgb)
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert bgr[0, 0].tolist() == [0, 0, 255]
    grey = encode_png(np.array([[0, 9]], np.uint8))
    assert Image.open(io.BytesIO(grey)).mode == "L"
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2, 4), np.uint8))
