"""sensor_msgs/Image and CompressedImage buffers -> numpy RGB / depth arrays (no ROS import).

Every function takes the message fields as plain values, so the node, the bag replay and the
tests share one code path. Every bad input raises `ImageConversionError`, and the sizes are
checked before anything is allocated: a message claiming 100000 x 100000 pixels costs nothing.

Copies and views (`image_to_rgb`):
- rgb8 / rgba8 (and padded rows of either): a zero-copy view of the message buffer (rows may be
  strided, rgba8 pixels are 4 bytes apart). The view is read-only when `data` is `bytes`, and
  aliases the message when `data` is a writable buffer (`array.array`, `bytearray`): copy it
  before writing into it.
- every other encoding: one new, writable, C-contiguous array. bgr8 is NOT returned as the
  negative-stride view `[..., ::-1]`: `torch.from_numpy` rejects negative strides and Pillow
  copies such a view anyway, so one explicit copy here (about 2 ms at 1920 x 1080) is the
  cheapest route to every consumer.
"""

from __future__ import annotations

import array
import io
import operator
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

# 7680 x 4320 (8K UHD): larger frames are refused before any allocation.
DEFAULT_MAX_IMAGE_PIXELS = 33_177_600

ImageData = bytes | bytearray | memoryview | np.ndarray | array.array


class ImageConversionError(ValueError):
    """An image buffer that cannot be converted: unsupported encoding or inconsistent fields."""


@dataclass(frozen=True)
class _Layout:
    channels: int  # values per pixel in the buffer
    dtype: str  # little-endian numpy dtype of one value
    kind: str  # "color", "gray" (scaled to 8 bit) or "depth" (normalised for display)
    rgb: tuple[int, int, int] | None = None  # buffer channel index of R, G, B (color only)

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * np.dtype(self.dtype).itemsize


_RGB, _BGR = (0, 1, 2), (2, 1, 0)
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout(3, "u1", "color", _RGB),
    "bgr8": _Layout(3, "u1", "color", _BGR),
    "rgba8": _Layout(4, "u1", "color", _RGB),
    "bgra8": _Layout(4, "u1", "color", _BGR),
    "rgb16": _Layout(3, "<u2", "color", _RGB),
    "bgr16": _Layout(3, "<u2", "color", _BGR),
    "rgba16": _Layout(4, "<u2", "color", _RGB),
    "bgra16": _Layout(4, "<u2", "color", _BGR),
    "mono8": _Layout(1, "u1", "gray"),
    "mono16": _Layout(1, "<u2", "gray"),
    "16uc1": _Layout(1, "<u2", "depth"),
    "32fc1": _Layout(1, "<f4", "depth"),
}
# OpenCV-style type names, read the way cv_bridge reads them (8UC3 is BGR).
_ALIASES = {"8uc1": "mono8", "8uc3": "bgr8", "8uc4": "bgra8"}
SUPPORTED_ENCODINGS: tuple[str, ...] = (
    "rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16",
    "mono8", "mono16", "16UC1", "32FC1", "8UC1", "8UC3", "8UC4",
)  # fmt: skip
DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "mono16", "32FC1")


def _layout(encoding: object) -> _Layout:
    if not isinstance(encoding, str):
        raise ImageConversionError(f"encoding must be a string, got {type(encoding).__name__}")
    key = encoding.strip().lower()
    layout = _LAYOUTS.get(_ALIASES.get(key, key))
    if layout is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding[:40]!r}; supported: "
            + ", ".join(SUPPORTED_ENCODINGS)
        )
    return layout


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ImageConversionError(f"{name} must be an integer, got a bool")
    try:
        number = operator.index(value)
    except TypeError:
        raise ImageConversionError(
            f"{name} must be an integer, got {type(value).__name__}"
        ) from None
    if number < 0:
        raise ImageConversionError(f"{name} must not be negative, got {number}")
    return number


def _byte_buffer(data: object) -> np.ndarray:
    """`data` as a flat uint8 array sharing its memory (a copy only for non-contiguous arrays)."""
    if isinstance(data, np.ndarray):
        if data.dtype == object:
            raise ImageConversionError("data must hold raw bytes, got an object array")
        flat = np.ascontiguousarray(data).reshape(-1)
        return flat.view(np.uint8)
    if not isinstance(data, (bytes, bytearray, memoryview, array.array)):
        raise ImageConversionError(
            f"data must be bytes, bytearray, memoryview, array.array or numpy array, "
            f"got {type(data).__name__}"
        )
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as err:
        raise ImageConversionError(f"data is not a contiguous byte buffer: {err}") from None


def _pixel_array(
    layout: _Layout,
    width: object,
    height: object,
    step: object,
    data: object,
    is_bigendian: object,
    max_pixels: int,
) -> np.ndarray:
    """Validated H x W x C view of the buffer (every check happens before any allocation)."""
    max_pixels = _non_negative_int("max_pixels", max_pixels)
    width = _non_negative_int("width", width)
    height = _non_negative_int("height", height)
    step = _non_negative_int("step", step)
    if width == 0 or height == 0:
        raise ImageConversionError(f"image size must be positive, got {width} x {height}")
    if width * height > max_pixels:
        raise ImageConversionError(
            f"image of {width} x {height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels"
        )
    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is shorter than a row ({width} pixels x {layout.bytes_per_pixel} "
            f"bytes = {row_bytes})"
        )
    buffer = _byte_buffer(data)
    if buffer.size < step * height:
        raise ImageConversionError(
            f"data holds {buffer.size} bytes, fewer than step x height = {step * height}"
        )
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]
    dtype = np.dtype(layout.dtype)
    if dtype.itemsize > 1:
        rows = rows.view(dtype.newbyteorder(">" if is_bigendian else "<"))
    return rows.reshape(height, width, layout.channels)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    rgb = np.empty((*gray.shape, 3), dtype=np.uint8)
    for channel in range(3):  # 5x faster than one broadcast assignment
        rgb[..., channel] = gray
    return rgb


def _depth_for_display(depth: np.ndarray) -> np.ndarray:
    """Valid depths (finite, > 0) stretched linearly to 1..255 over this frame; invalid -> 0."""
    values = depth.astype(np.float32)
    valid = np.isfinite(values)
    valid &= values > 0
    gray = np.zeros(depth.shape, dtype=np.uint8)
    near = float(np.min(values, where=valid, initial=np.inf))
    far = float(np.max(values, where=valid, initial=-np.inf))
    if near > far:  # no valid pixel
        return gray
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN pixels are masked out below
        values -= near
        values *= 254.0 / (far - near) if far > near else 0.0
        values += 1.5  # 1 + rounding
        np.copyto(gray, values, casting="unsafe", where=valid)
    return gray


def image_to_rgb(
    encoding: str,
    width: int,
    height: int,
    step: int,
    data: ImageData,
    is_bigendian: bool = False,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """sensor_msgs/Image fields -> H x W x 3 uint8 RGB (a view for rgb8/rgba8, see module doc).

    16-bit colour and mono16 keep the high byte; 16UC1/32FC1 depth is stretched over the frame's
    valid range for display (invalid -> black). Extra bytes after `step * height` are ignored.
    """
    layout = _layout(encoding)
    pixels = _pixel_array(layout, width, height, step, data, is_bigendian, max_pixels)
    if layout.kind == "depth":
        return _gray_to_rgb(_depth_for_display(pixels[..., 0]))
    if layout.kind == "gray":
        gray = pixels[..., 0]
        return _gray_to_rgb(gray if gray.dtype.itemsize == 1 else (gray >> 8).astype(np.uint8))
    if pixels.dtype.itemsize == 1 and layout.rgb == _RGB:
        return pixels[..., :3]  # zero-copy view
    # One contiguous copy, channel by channel: 3x faster than ascontiguousarray(p[..., ::-1]).
    rgb = np.empty((*pixels.shape[:2], 3), dtype=np.uint8)
    for out_channel, in_channel in enumerate(layout.rgb):
        channel = pixels[..., in_channel]
        rgb[..., out_channel] = channel if channel.dtype.itemsize == 1 else channel >> 8
    return rgb


def depth_to_meters(
    encoding: str,
    width: int,
    height: int,
    step: int,
    data: ImageData,
    is_bigendian: bool = False,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Depth image -> H x W float32 metres, NaN where invalid (a new array).

    16UC1 / mono16 are millimetres (0 = no reading); 32FC1 is metres (NaN, inf, <= 0 = invalid).
    """
    layout = _layout(encoding)
    if layout.channels != 1 or layout.dtype == "u1":
        raise ImageConversionError(
            f"{encoding!r} is not a depth encoding; supported: " + ", ".join(DEPTH_ENCODINGS)
        )
    depth = _pixel_array(layout, width, height, step, data, is_bigendian, max_pixels)[..., 0]
    meters = depth.astype(np.float32)  # a new array: astype copies
    if layout.dtype == "<u2":
        meters *= np.float32(0.001)
    meters[~(np.isfinite(meters) & (meters > 0))] = np.nan
    return meters


def _pil():
    from PIL import Image

    return Image


# What `spatialthinker-ros ask` reads from files (a camera's CompressedImage: JPEG or PNG).
FILE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM")


def decode_compressed(
    data: ImageData,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    formats: tuple[str, ...] = ("JPEG", "PNG"),
) -> np.ndarray:
    """sensor_msgs/CompressedImage data (JPEG or PNG; an image file's bytes with
    `formats=FILE_FORMATS`) -> H x W x 3 uint8 RGB (a new array).

    The size in the header is checked against `max_pixels` before the pixels are decoded.
    16-bit grey PNGs keep their high byte.
    """
    Image = _pil()
    max_pixels = _non_negative_int("max_pixels", max_pixels)
    buffer = _byte_buffer(data)
    if buffer.size == 0:
        raise ImageConversionError("compressed image data is empty")
    try:
        # Pillow raises a zoo of types on corrupt data (OSError, SyntaxError, struct.error, ...).
        with warnings.catch_warnings():
            # Pillow warns above ~89 Mpx; the size check below is the limit that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(buffer), formats=formats)
        with opened as image:
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ImageConversionError(
                    f"compressed image of {width} x {height} pixels is empty or exceeds the "
                    f"limit of {max_pixels} pixels"
                )
            if image.mode == "F" or (image.mode == "I" and image.format != "PNG"):
                # 32-bit float or integer samples (TIFF): no camera frame's scale; before,
                # they were clipped into a white or noise image and answered
                raise ImageConversionError(
                    f"{image.format} image of mode {image.mode} (32-bit "
                    f"{'float' if image.mode == 'F' else 'integer'} samples) is not a camera "
                    "frame: use 8- or 16-bit"
                )
            if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit grey PNG
                gray = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
                return _gray_to_rgb((gray >> 8).astype(np.uint8))
            rgb = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    except ImageConversionError:
        raise
    except Image.UnidentifiedImageError:  # its text names a buffer object's address
        raise ImageConversionError(
            f"cannot decode compressed image: not a {', '.join(formats)} image"
        ) from None
    except Image.DecompressionBombError as err:  # Pillow's own cap (~179 Mpx) came first
        raise ImageConversionError(
            f"compressed image exceeds the limit of {max_pixels} pixels ({err})"
        ) from None
    except Exception as err:  # any decoder failure is bad input
        raise ImageConversionError(
            f"cannot decode compressed image: {type(err).__name__}: {err}"
        ) from None
    if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
        raise ImageConversionError(f"decoder returned an unexpected array {rgb.shape} {rgb.dtype}")
    return rgb


def message_to_rgb(msg: Any, compressed: bool, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                   ) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage (rclpy's or rosbags', read by field) -> H x W x 3
    uint8 RGB, under the same pixel cap: the node and replay decode frames through this."""
    if compressed:
        return decode_compressed(msg.data, max_pixels)
    return image_to_rgb(msg.encoding, msg.width, msg.height, msg.step, msg.data,
                        bool(msg.is_bigendian), max_pixels)


def _check_rgb(rgb: object) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ImageConversionError("expected an H x W x 3 uint8 numpy array")
    if rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError(f"expected an H x W x 3 uint8 array, got shape {rgb.shape}")
    return rgb


_PUBLISH_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def rgb_to_image_fields(
    rgb: np.ndarray, encoding: str = "rgb8"
) -> tuple[str, int, int, int, bytes]:
    """H x W x 3 uint8 RGB -> (encoding, width, height, step, data) of a sensor_msgs/Image.

    Rows are packed (step = width x bytes per pixel); mono8 is ITU-R BT.601 luma.
    """
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[..., ::-1]
    elif encoding in ("rgba8", "bgra8"):
        pixels = np.full((height, width, 4), 255, dtype=np.uint8)
        pixels[..., :3] = rgb if encoding == "rgba8" else rgb[..., ::-1]
    elif encoding == "mono8":
        luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        pixels = np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None]
    else:
        raise ImageConversionError(
            f"cannot publish as {encoding!r}; supported: " + ", ".join(_PUBLISH_ENCODINGS)
        )
    channels = pixels.shape[2]
    return encoding, width, height, width * channels, pixels.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """H x W x 3 uint8 RGB -> JPEG bytes (for a sensor_msgs/CompressedImage with format "jpeg")."""
    rgb = _check_rgb(rgb)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ImageConversionError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    out = io.BytesIO()
    _pil().fromarray(np.ascontiguousarray(rgb)).save(out, format="JPEG", quality=quality)
    return out.getvalue()
