"""sensor_msgs-style buffers -> numpy: every encoding against hand-built arrays, views, errors."""

from __future__ import annotations

import array
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from spatialthinker_ros.core.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    decode_compressed,
    depth_to_meters,
    encode_jpeg,
    image_to_rgb,
    rgb_to_image_fields,
)

# A 3 x 2 RGB image with distinct values in every channel.
RGB = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [40, 50, 60], [70, 80, 90]]],
    dtype=np.uint8,
)
HEIGHT, WIDTH = RGB.shape[:2]


def padded(rows: np.ndarray, pad: int) -> bytes:
    """Rows of `rows` (H x row_bytes uint8) with `pad` junk bytes after each."""
    junk = np.full((rows.shape[0], pad), 0xEE, dtype=np.uint8)
    return np.concatenate([rows, junk], axis=1).tobytes()


def as_rows(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(pixels.shape[0], -1).view(np.uint8)


# --- colour encodings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "buffer"),
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("8UC3", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full((HEIGHT, WIDTH), 7, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full((HEIGHT, WIDTH), 7, np.uint8)])),
        ("8UC4", np.dstack([RGB[..., ::-1], np.full((HEIGHT, WIDTH), 7, np.uint8)])),
    ],
)
@pytest.mark.parametrize("pad", [0, 5])
def test_8bit_colour_encodings(encoding: str, buffer: np.ndarray, pad: int) -> None:
    rows = as_rows(np.ascontiguousarray(buffer))
    out = image_to_rgb(encoding, WIDTH, HEIGHT, rows.shape[1] + pad, padded(rows, pad))
    assert out.shape == (HEIGHT, WIDTH, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16"])
def test_16bit_colour_keeps_high_byte(encoding: str, big_endian: bool) -> None:
    wide = RGB.astype(np.uint16) * 256 + 0xAB  # the low byte must be dropped
    if encoding.startswith("bgr"):
        wide = wide[..., ::-1]
    if "a" in encoding[3:]:
        wide = np.dstack([wide, np.full((HEIGHT, WIDTH), 0x1234, np.uint16)])
    wide = np.ascontiguousarray(wide, dtype=">u2" if big_endian else "<u2")
    rows = as_rows(wide)
    out = image_to_rgb(encoding, WIDTH, HEIGHT, rows.shape[1], rows.tobytes(), big_endian)
    np.testing.assert_array_equal(out, RGB)


def test_encoding_names_are_case_insensitive_and_trimmed() -> None:
    out = image_to_rgb(" RGB8 ", WIDTH, HEIGHT, WIDTH * 3, RGB.tobytes())
    np.testing.assert_array_equal(out, RGB)


# --- grey and depth for display ---------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_is_replicated_to_three_channels(encoding: str) -> None:
    gray = np.array([[0, 1, 2], [128, 254, 255]], dtype=np.uint8)
    out = image_to_rgb(encoding, 3, 2, 4, padded(gray, 1))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_is_shifted_to_8_bit(big_endian: bool) -> None:
    gray = np.array([[0, 255, 256], [0x1234, 0xFF00, 0xFFFF]], dtype=">u2" if big_endian else "<u2")
    out = image_to_rgb("mono16", 3, 2, 6, gray.tobytes(), is_bigendian=big_endian)
    np.testing.assert_array_equal(out[..., 0], [[0, 0, 1], [0x12, 0xFF, 0xFF]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("big_endian", [False, True])
def test_16uc1_depth_is_normalised_for_display(big_endian: bool) -> None:
    mm = np.array([[0, 1000, 2000], [3000, 0, 1500]], dtype=">u2" if big_endian else "<u2")
    out = image_to_rgb("16UC1", 3, 2, 6, mm.tobytes(), is_bigendian=big_endian)
    # valid range 1000..3000 -> 1..255, invalid (0) -> 0
    np.testing.assert_array_equal(out[..., 1], [[0, 1, 128], [255, 0, 65]])


def test_32fc1_depth_is_normalised_for_display_and_nan_is_black() -> None:
    meters = np.array([[np.nan, 1.0, 2.0], [np.inf, -1.0, 3.0]], dtype="<f4")
    out = image_to_rgb("32FC1", 3, 2, 12, meters.tobytes())
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 128], [0, 0, 255]])


def test_depth_without_valid_pixels_is_black() -> None:
    out = image_to_rgb("16UC1", 2, 2, 4, bytes(8))
    assert not out.any()


def test_constant_depth_with_inf_and_nan_is_drawn_dim_without_warnings() -> None:
    depth = np.array([2.0, 2.0, np.inf, np.nan, -np.inf], "<f4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value RuntimeWarning
        out = image_to_rgb("32FC1", 5, 1, 20, depth.tobytes())
    np.testing.assert_array_equal(out[..., 0], [[1, 1, 0, 0, 0]])


# --- zero-copy and buffer types ---------------------------------------------------------------


def test_rgb8_is_a_view_of_the_message_buffer() -> None:
    data = RGB.tobytes()
    out = image_to_rgb("rgb8", WIDTH, HEIGHT, WIDTH * 3, data)
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))
    assert not out.flags.writeable  # bytes are immutable: the view says so


def test_padded_rgb8_and_rgba8_are_strided_views() -> None:
    rows = as_rows(RGB)
    data = bytearray(padded(rows, 3))
    out = image_to_rgb("rgb8", WIDTH, HEIGHT, rows.shape[1] + 3, data)
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(out, RGB)
    rgba = np.ascontiguousarray(np.dstack([RGB, np.zeros((HEIGHT, WIDTH), np.uint8)]))
    rgba_data = bytearray(rgba.tobytes())
    out = image_to_rgb("rgba8", WIDTH, HEIGHT, WIDTH * 4, rgba_data)
    assert np.shares_memory(out, np.frombuffer(rgba_data, np.uint8))


def test_array_array_from_rclpy_is_read_without_a_copy() -> None:
    # rclpy delivers sensor_msgs/Image.data as array.array('B').
    data = array.array("B", RGB.tobytes())
    out = image_to_rgb("rgb8", WIDTH, HEIGHT, WIDTH * 3, data)
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize(
    "make", [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8).copy()]
)
def test_every_buffer_type_converts(make) -> None:
    out = image_to_rgb("bgr8", WIDTH, HEIGHT, WIDTH * 3, make(RGB[..., ::-1].tobytes()))
    np.testing.assert_array_equal(out, RGB)


def test_numpy_input_of_any_dtype_is_read_as_raw_bytes() -> None:
    depth = np.array([[1000, 0], [2000, 3000]], dtype=np.uint16)  # as rosbags could hand over
    meters = depth_to_meters("16UC1", 2, 2, 4, depth)
    np.testing.assert_allclose(meters, [[1.0, np.nan], [2.0, 3.0]])


def test_bgr8_copy_is_contiguous_for_torch_and_pillow() -> None:
    out = image_to_rgb("bgr8", WIDTH, HEIGHT, WIDTH * 3, RGB[..., ::-1].tobytes())
    assert out.flags.c_contiguous and out.flags.writeable and all(s > 0 for s in out.strides)


def test_trailing_bytes_after_the_last_row_are_ignored() -> None:
    out = image_to_rgb("rgb8", WIDTH, HEIGHT, WIDTH * 3, RGB.tobytes() + b"\x01" * 17)
    np.testing.assert_array_equal(out, RGB)


def test_odd_step_for_16_bit_rows_is_read_unaligned() -> None:
    gray = np.array([[0x0100, 0x0200], [0x0300, 0x0400]], dtype="<u2")
    data = padded(gray.view(np.uint8).reshape(2, 4), 1)  # step 5: rows start at odd offsets
    out = image_to_rgb("mono16", 2, 2, 5, data)
    np.testing.assert_array_equal(out[..., 0], [[1, 2], [3, 4]])


# --- depth in metres --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_millimetre_depth_to_metres(encoding: str, big_endian: bool) -> None:
    mm = np.array([[0, 1], [1500, 65535]], dtype=">u2" if big_endian else "<u2")
    data = padded(mm.view(np.uint8).reshape(2, 4), 2)
    meters = depth_to_meters(encoding, 2, 2, 6, data, is_bigendian=big_endian)
    assert meters.dtype == np.float32 and meters.shape == (2, 2)
    np.testing.assert_allclose(meters, [[np.nan, 0.001], [1.5, 65.535]], rtol=1e-6)


@pytest.mark.parametrize("big_endian", [False, True])
def test_float_depth_invalid_values_become_nan(big_endian: bool) -> None:
    values = np.array(
        [[1.25, 0.0, -2.0], [np.nan, np.inf, 7.5]], dtype=">f4" if big_endian else "<f4"
    )
    meters = depth_to_meters("32FC1", 3, 2, 12, values.tobytes(), is_bigendian=big_endian)
    np.testing.assert_array_equal(
        meters, np.array([[1.25, np.nan, np.nan], [np.nan, np.nan, 7.5]], np.float32)
    )


def test_depth_to_meters_returns_a_writable_copy() -> None:
    values = bytearray(np.array([1.0, 2.0], "<f4").tobytes())
    meters = depth_to_meters("32FC1", 2, 1, 8, values)
    assert meters.flags.writeable and not np.shares_memory(meters, np.frombuffer(values, np.uint8))


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "bgra8", "yuv422"])
def test_depth_to_meters_rejects_non_depth_encodings(encoding: str) -> None:
    with pytest.raises(ImageConversionError):
        depth_to_meters(encoding, 1, 1, 4, bytes(4))


# --- compressed ------------------------------------------------------------------------------


def compressed(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


def test_png_round_trip_is_exact() -> None:
    np.testing.assert_array_equal(decode_compressed(compressed(RGB, "PNG")), RGB)


def test_jpeg_round_trip_is_close() -> None:
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0], smooth[..., 1], smooth[..., 2] = 200, 100, 50
    out = decode_compressed(encode_jpeg(smooth, quality=95))
    assert out.shape == smooth.shape and out.flags.writeable
    assert np.abs(out.astype(int) - smooth).max() <= 3


def test_compressed_grey_and_16_bit_png_decode_to_rgb() -> None:
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    np.testing.assert_array_equal(decode_compressed(compressed(gray, "PNG"))[..., 1], gray)
    wide = np.array([[0x0100, 0x8000], [0xFF00, 0x00FF]], np.uint16)
    np.testing.assert_array_equal(
        decode_compressed(compressed(wide, "PNG"))[..., 2], [[1, 0x80], [0xFF, 0]]
    )


def test_compressed_accepts_array_array_and_numpy() -> None:
    png = compressed(RGB, "PNG")
    np.testing.assert_array_equal(decode_compressed(array.array("B", png)), RGB)
    np.testing.assert_array_equal(decode_compressed(np.frombuffer(png, np.uint8)), RGB)


def test_compressed_size_is_checked_before_decoding() -> None:
    # A 4000 x 4000 PNG of zeros compresses to a few kB; decoding it would take 48 MB.
    big = compressed(np.zeros((4000, 4000), np.uint8), "PNG", compress_level=9)
    assert len(big) < 100_000
    with pytest.raises(ImageConversionError, match="exceeds the limit"):
        decode_compressed(big, max_pixels=1_000_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        compressed(RGB, "PNG")[:40],  # header only, truncated
        compressed(np.zeros((64, 64, 3), np.uint8), "JPEG")[:200],  # truncated JPEG
        compressed(RGB, "BMP"),  # a real image, but not JPEG/PNG
    ],
    ids=["empty", "garbage", "png-truncated", "jpeg-truncated", "bmp"],
)
def test_corrupt_compressed_data_raises_conversion_error(data: bytes) -> None:
    with pytest.raises(ImageConversionError):
        decode_compressed(data)


# --- publishing helpers ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_rgb_to_image_fields_round_trips(encoding: str) -> None:
    fields = rgb_to_image_fields(RGB, encoding)
    enc, width, height, step, data = fields
    assert (enc, width, height) == (encoding, WIDTH, HEIGHT) and len(data) == step * height
    np.testing.assert_array_equal(image_to_rgb(*fields), RGB)


def test_rgb_to_image_fields_mono8_is_luma() -> None:
    enc, width, height, step, data = rgb_to_image_fields(RGB, "mono8")
    assert (enc, step) == ("mono8", WIDTH)
    assert list(data[:3]) == [76, 150, 29]  # BT.601 of pure red, green, blue


def test_rgb_to_image_fields_accepts_non_contiguous_views() -> None:
    view = np.ascontiguousarray(np.dstack([RGB, RGB]))[..., :3]
    np.testing.assert_array_equal(image_to_rgb(*rgb_to_image_fields(view)), RGB)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 2), np.uint8),
        np.zeros((2, 2, 4), np.uint8),
        np.zeros((2, 2, 3), np.float32),
        np.zeros((0, 2, 3), np.uint8),
        [[1, 2, 3]],
    ],
)
def test_publishing_helpers_reject_non_rgb(bad) -> None:
    with pytest.raises(ImageConversionError):
        rgb_to_image_fields(bad)
    with pytest.raises(ImageConversionError):
        encode_jpeg(bad)


def test_publishing_helpers_reject_bad_options() -> None:
    with pytest.raises(ImageConversionError, match="cannot publish"):
        rgb_to_image_fields(RGB, "yuv422")
    for quality in (0, 101, 9.5, True):
        with pytest.raises(ImageConversionError, match="quality"):
            encode_jpeg(RGB, quality=quality)


# --- errors ---------------------------------------------------------------------------------


def test_unsupported_encoding_lists_the_supported_ones() -> None:
    with pytest.raises(ImageConversionError, match="unsupported image encoding") as err:
        image_to_rgb("yuv422", 2, 2, 4, bytes(8))
    for name in SUPPORTED_ENCODINGS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("rgb8", 0, 2, 6, bytes(12)), "must be positive"),
        (("rgb8", 2, 0, 6, bytes(12)), "must be positive"),
        (("rgb8", -1, 2, 6, bytes(12)), "must not be negative"),
        (("rgb8", 2, 2, -6, bytes(12)), "must not be negative"),
        (("rgb8", 2.0, 2, 6, bytes(12)), "must be an integer"),
        (("rgb8", True, 2, 6, bytes(12)), "must be an integer"),
        (("rgb8", 2, 2, 5, bytes(12)), "shorter than a row"),
        (("mono16", 3, 1, 5, bytes(6)), "shorter than a row"),
        (("rgb8", 2, 2, 6, bytes(11)), "fewer than step x height"),
        (("rgb8", 2, 2, 8, bytes(12)), "fewer than step x height"),
        (("rgb8", 100_000, 100_000, 300_000, bytes(10)), "exceeds the limit"),
        (("rgb8", 2, 2, 6, "not bytes"), "data must be"),
        (("rgb8", 2, 2, 6, [0] * 12), "data must be"),
        (("rgb8", 2, 2, 6, np.array([object()] * 12)), "object array"),
        ((None, 2, 2, 6, bytes(12)), "encoding must be a string"),
        (("", 2, 2, 6, bytes(12)), "unsupported"),
    ],
)
def test_inconsistent_fields_raise_conversion_error(fields: tuple, message: str) -> None:
    with pytest.raises(ImageConversionError, match=message):
        image_to_rgb(*fields)


def test_max_pixels_is_a_limit_not_a_hint() -> None:
    image_to_rgb("mono8", 4, 4, 4, bytes(16), max_pixels=16)
    with pytest.raises(ImageConversionError, match="exceeds the limit"):
        image_to_rgb("mono8", 4, 4, 4, bytes(16), max_pixels=15)
    with pytest.raises(ImageConversionError, match="exceeds the limit"):
        depth_to_meters("16UC1", 4, 4, 8, bytes(32), max_pixels=15)
    assert DEFAULT_MAX_IMAGE_PIXELS == 7680 * 4320


def test_error_type_is_a_value_error() -> None:
    assert issubclass(ImageConversionError, ValueError)


def _encoded(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_compressed_frames_of_every_odd_kind(tmp_path):
    """Issue 21 red team: what a camera or a file may hold. The node and replay take JPEG and
    PNG (16-bit grey: its high byte; CMYK JPEG: converted; APNG: its first frame); WebP, GIF
    and TIFF are refused there with one line; `ask` also reads WebP and TIFF files, but never
    a 32-bit float or integer TIFF (before: clipped into a white or noise image and answered)."""
    from spatialthinker_ros.core.images import FILE_FORMATS, ImageConversionError, decode_compressed

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    ramp = (np.arange(32 * 48).reshape(32, 48) * 40).astype(np.uint16)
    png16 = decode_compressed(_encoded(Image.fromarray(ramp), "PNG"))
    assert (png16[..., 0] == (ramp >> 8)).all()
    cmyk = decode_compressed(_encoded(image.convert("CMYK"), "JPEG", quality=95))
    assert np.abs(cmyk.astype(int) - rgb).mean() < 4
    apng = _encoded(image, "PNG", save_all=True, append_images=[image.rotate(90)])
    assert (decode_compressed(apng) == rgb).all()
    gif = _encoded(image, "GIF", save_all=True, append_images=[image.rotate(90)])
    webp, tiff = _encoded(image, "WEBP", lossless=True), _encoded(image, "TIFF")
    for data in (gif, webp, tiff):
        with pytest.raises(ImageConversionError, match="not a JPEG, PNG image"):
            decode_compressed(data)
    assert (decode_compressed(webp, formats=FILE_FORMATS) == rgb).all()
    assert (decode_compressed(tiff, formats=FILE_FORMATS) == rgb).all()
    with pytest.raises(ImageConversionError, match="not a JPEG, PNG, BMP"):
        decode_compressed(gif, formats=FILE_FORMATS)
    float_tiff = Image.fromarray(rng.random((32, 48), dtype=np.float32) * 1000)
    int_tiff = Image.fromarray(rng.integers(0, 2**31, (32, 48), dtype=np.int32))
    for sample, kind in ((float_tiff, "float"), (int_tiff, "integer")):
        with pytest.raises(ImageConversionError, match=f"32-bit {kind} samples"):
            decode_compressed(_encoded(sample, "TIFF"), formats=FILE_FORMATS)
    grey16_tiff = _encoded(Image.fromarray(ramp), "TIFF")
    assert (decode_compressed(grey16_tiff, formats=FILE_FORMATS)[..., 0] == (ramp >> 8)).all()
