"""Input image validation: sniff the magic bytes, check the limits from the header, decode safely.

Everything here is synchronous Pillow work; callers run it in a thread
(`anyio.to_thread.run_sync`). The contract every function keeps:

* the format comes from the magic bytes only (never a filename or a Content-Type), and Pillow is
  told to use that one decoder (`Image.open(..., formats=[fmt])`), so a FITS/PSD/SVG/HTML payload
  never reaches another plugin;
* the byte limit is checked first, the pixel limit and the aspect ratio are checked from the
  header (`Image.open` without `load()`), so a decompression bomb is refused before any pixel
  buffer is allocated; Pillow's own bomb guard is tightened as a second line
  (`Image.MAX_IMAGE_PIXELS`, `DecompressionBombWarning` turned into an error);
* the image must decode completely (`ImageFile.LOAD_TRUNCATED_IMAGES` is forced off);
* the result is upright: an EXIF orientation is applied.
"""

from __future__ import annotations

import io
import warnings
from fractions import Fraction

from PIL import Image, ImageFile

from adapters.base import InputImage
from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from gateway.images.provenance import has_c2pa
from gateway.images.reencode import reencode_input

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_PILLOW_GUARD_PIXELS = 40_000_000  # Pillow warns above this and raises above twice this
_ORIENTATION_TAG = 0x0112
_TRANSPOSE: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_MARKUP_PREFIXES = (b"<", b"\xef\xbb\xbf<")


def sniff(data: bytes) -> str | None:
    """The Pillow format name ("PNG", "JPEG", "WEBP", "GIF") for known magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def harden_pillow(max_pixels: int = _PILLOW_GUARD_PIXELS) -> None:
    """Tighten Pillow's process-wide guards; idempotent and cheap (called before every open).

    Sets `Image.MAX_IMAGE_PIXELS` to max(40 MP, `max_pixels`) unless it is already lower, makes
    `DecompressionBombWarning` an error and turns `ImageFile.LOAD_TRUNCATED_IMAGES` off.
    """
    guard = max(_PILLOW_GUARD_PIXELS, max_pixels)
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > guard:
        Image.MAX_IMAGE_PIXELS = guard
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if not any(f[0] == "error" and f[2] is Image.DecompressionBombWarning
               for f in warnings.filters):
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _ratio_text(r: float) -> str:
    f = Fraction(r).limit_denominator(20)
    return f"{f.numerator}:{f.denominator}"


def _too_many_pixels(param: str, w: int, h: int, max_pixels: int) -> InvalidRequest:
    return InvalidRequest(
        f"{param}: image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels "
        f"({max_pixels / 1_000_000:g} MP).", param=param, code="image_too_large")


def open_image(data: bytes, *, param: str, max_bytes: int, max_pixels: int,
               min_ratio: float | None = None, max_ratio: float | None = None) -> Image.Image:
    """Decode untrusted bytes into a loaded, upright Pillow image (first frame if animated).

    Raises PayloadTooLarge (413) above `max_bytes`; UnsupportedMedia (415, code
    `unsupported_image_format`) for anything but PNG/JPEG/WebP/GIF magic bytes (SVG, HTML,
    ...); InvalidRequest (400) for more than `max_pixels` (`image_too_large`), a width/height
    ratio outside [`min_ratio`, `max_ratio`] (`invalid_aspect_ratio`, checked on the upright
    size) or bytes that do not decode completely (`invalid_image`, e.g. a truncated PNG).
    Every message names `param` and the limit. The caller owns the returned image.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{param}: image is {len(data)} bytes; the limit is {max_bytes} bytes "
            f"({max_bytes / (1024 * 1024):g} MB).", param=param)
    fmt = sniff(data)
    if fmt is None:
        kind = "markup (SVG/HTML/XML)" if data.lstrip().startswith(_MARKUP_PREFIXES) else "data"
        raise UnsupportedMedia(
            f"{param}: the content is {kind}, not an image; accepted formats are PNG, JPEG, "
            f"WebP and GIF.", param=param, code="unsupported_image_format")
    harden_pillow(max_pixels)
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"{param}: image has more than {max_pixels} pixels (the limit).",
                             param=param, code="image_too_large") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(f"{param}: the {fmt} image could not be decoded ({exc}).",
                             param=param, code="invalid_image") from exc
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise _too_many_pixels(param, w, h, max_pixels)
        orientation = _orientation(im)
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        _check_ratio(param, w, h, min_ratio, max_ratio)
        try:
            im.load()  # the first frame only: an animated GIF/WebP is never seeked further
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidRequest(f"{param}: the {fmt} image could not be decoded ({exc}).",
                                 param=param, code="invalid_image") from exc
        out: Image.Image = im
        for op in _TRANSPOSE.get(orientation, ()):
            out = out.transpose(op)
        if out is not im:
            im.close()
        return out
    except BaseException:
        im.close()
        raise


def upright_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) an image shows at, EXIF orientation applied, read from its header
    only (nothing is decoded); None when the header cannot be read or the image is over
    Pillow's bomb guard. For bytes that may be passed on untouched."""
    fmt = sniff(data)
    if fmt is None:
        return None
    harden_pillow()
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            w, h = im.size
            return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        return None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is not worth refusing the image for
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_ratio(param: str, w: int, h: int, lo: float | None, hi: float | None) -> None:
    if lo is None and hi is None:
        return
    r = w / h
    if (lo is not None and r < lo - 1e-9) or (hi is not None and r > hi + 1e-9):
        lo_t = _ratio_text(lo) if lo is not None else "any"
        hi_t = _ratio_text(hi) if hi is not None else "any"
        raise InvalidRequest(
            f"{param}: aspect ratio {w}x{h} ({r:.3f}) is outside the allowed range "
            f"{lo_t} to {hi_t} (width/height).", param=param, code="invalid_aspect_ratio")


def validate_image(data: bytes, *, param: str, max_bytes: int, max_pixels: int,
                   min_ratio: float | None = None, max_ratio: float | None = None,
                   notes: list[str] | None = None) -> InputImage:
    """A validated, upright input image, ready to send upstream.

    The bytes come back unchanged when they are a still PNG/JPEG/WebP with no EXIF rotation;
    otherwise (an EXIF orientation other than 1, any GIF, an animated WebP) the upright first
    frame is re-encoded by `reencode.reencode_input`: a JPEG as JPEG at quality 95, the others
    as lossless PNG, within `max_bytes` (scaled down if it must be). What was done is
    appended to `notes` when given. `width`/`height` are the upright size sent. Raises as
    `open_image` does (413 bytes, 415 not an image, 400 pixels/aspect ratio/undecodable),
    naming `param` and the limit. CPU-bound: call it in a thread.
    """
    fmt = sniff(data)
    with open_image(data, param=param, max_bytes=max_bytes, max_pixels=max_pixels,
                    min_ratio=min_ratio, max_ratio=max_ratio) as im:
        animated = bool(getattr(im, "is_animated", False)) if fmt in ("WEBP", "GIF") else False
        rotated = im.format is None  # transposed images lose `format`
        assert fmt is not None
        if not (fmt == "GIF" or animated or rotated):
            return InputImage(data=data, mime=_MIME[fmt], width=im.width, height=im.height)
        original = data
        data, mime, (width, height), how = reencode_input(im, fmt, max_bytes=max_bytes)
        if notes is not None:
            why = ("its EXIF orientation was applied" if rotated else
                   "its first frame was taken" if animated else "it was a GIF")
            lost = "; its C2PA content credentials were not kept" if has_c2pa(original) else ""
            notes.append(f"{param}: {why}; sent upstream re-encoded {how}{lost}")
        return InputImage(data=data, mime=mime, width=width, height=height)


def animation(data: bytes) -> str | None:
    """The format of an animated image (`GIF`, `WEBP`, `PNG` for APNG) with more than one
    frame, or None for a still or unreadable one. Reads the header and seeks one frame."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return str(im.format) if getattr(im, "is_animated", False) else None
    except (OSError, ValueError, EOFError, Image.DecompressionBombError):
        return None

