"""Edit masks: reading a client's mask and honouring it on the upstream's result.

FLUX.1 Kontext takes no mask, so the gateway sends the whole image and applies the mask
afterwards: `composite()` keeps the original where the mask is black, takes the result where it
is white and blends linearly in between. Two mask conventions are understood, told apart by the
mask itself (`load_mask`):

* grayscale/RGB (the reseller convention): white (255) = edit, black (0) = keep, gray = partial;
* OpenAI's: an image with an alpha channel whose TRANSPARENT pixels mark the area to edit. When
  the mask has an alpha channel with any alpha < 255, edit weight = 255 - alpha and the colour
  channels are ignored. A fully opaque RGBA mask is read as grayscale.

Synchronous Pillow work: callers run it in a thread (`anyio.to_thread.run_sync`).
"""

from __future__ import annotations

from PIL import Image, ImageChops

from adapters.base import OutputFormat
from gateway.errors import InvalidRequest
from gateway.images.encode import encode, has_alpha
from gateway.images.modes import to_8bit
from gateway.images.validate import open_image

_MASK_MAX_BYTES = 20 * 1024 * 1024
_MASK_MAX_PIXELS = 20_000_000
_RESULT_MAX_BYTES = 64 * 1024 * 1024
_RESULT_MAX_PIXELS = 40_000_000


def load_mask(data: bytes, *, image_size: tuple[int, int], param: str = "mask",
              max_bytes: int = _MASK_MAX_BYTES, max_pixels: int = _MASK_MAX_PIXELS) -> Image.Image:
    """The edit weights of a mask as an "L" image of `image_size`: 255 = edit, 0 = keep.

    The bytes are validated like any input image (415 not an image, 413 too big, 400 too many
    pixels or undecodable). Raises InvalidRequest (400, code `mask_size_mismatch`) naming
    `param` and both sizes when the (upright) mask is not exactly `image_size` (width, height).
    """
    with open_image(data, param=param, max_bytes=max_bytes, max_pixels=max_pixels) as im:
        if im.size != tuple(image_size):
            raise InvalidRequest(
                f"{param}: the mask is {im.width}x{im.height} but the image is "
                f"{image_size[0]}x{image_size[1]}; they must have the same size.",
                param=param, code="mask_size_mismatch")
        return mask_weights(im)


def mask_weights(im: Image.Image) -> Image.Image:
    """Edit weights ("L", 255 = edit) of a decoded mask, detecting its convention (see module)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if "A" in im.getbands():
        alpha = im.getchannel("A")
        lo, _ = alpha.getextrema()
        if isinstance(lo, int | float) and lo < 255:
            return ImageChops.invert(alpha)
        im = im.convert("RGB" if im.mode != "LA" else "L")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        top = 65535 if im.mode != "F" else 1.0
        return im.convert("F").point(lambda v: v * 255.0 / top).convert("L")
    return im.convert("L")


def composite(original: bytes, result: bytes, mask: Image.Image, output_format: OutputFormat,
              *, quality: int | None = None) -> bytes:
    """The original with the mask's area taken from the result, encoded as `output_format`.

    `original` is the validated, upright input; `result` the upstream's image, scaled to the
    original's size with LANCZOS when its size differs; `mask` the "L" weights from `load_mask`
    (same size as the original, else InvalidRequest `mask_size_mismatch`). Per pixel:
    mask 255 -> result, 0 -> original, between -> linear blend. The output has an alpha
    channel when the original has one (not for JPEG) and keeps the original's ICC profile; it
    is encoded by `encode.encode` (PNG, and WebP without a `quality`, are lossless: pixels
    under a black mask are bit-identical to the original's). Raises InvalidRequest
    (`invalid_image`) when either image cannot be decoded.
    """
    with open_result(original, param="image") as orig_im, \
         open_result(result, param="result") as res_im:
        merged = blend(orig_im, res_im, mask, alpha=output_format != "jpeg")
        return encode(merged, output_format, quality=quality,
                      icc_profile=orig_im.info.get("icc_profile"))


def open_result(data: bytes, *, param: str = "result") -> Image.Image:
    """An upstream result (or a stored input) decoded under the generous result limits."""
    return open_image(data, param=param, max_bytes=_RESULT_MAX_BYTES,
                      max_pixels=_RESULT_MAX_PIXELS)


def blend(original: Image.Image, result: Image.Image, mask: Image.Image, *,
          alpha: bool = True) -> Image.Image:
    """The composite of decoded images (see `composite`): `result` scaled to the original's
    size when it differs, taken where `mask` (the original's size) is white. RGBA when the
    original has transparency and `alpha`, else RGB. Raises InvalidRequest
    (`mask_size_mismatch`) when the mask is not the original's size."""
    if mask.size != original.size:
        raise InvalidRequest(
            f"mask: the mask is {mask.width}x{mask.height} but the image is "
            f"{original.width}x{original.height}; they must have the same size.",
            param="mask", code="mask_size_mismatch")
    mode = "RGBA" if alpha and has_alpha(original) else "RGB"
    base = to_8bit(original).convert(mode)
    top = to_8bit(result).convert(mode)
    if top.size != base.size:
        top = top.resize(base.size, Image.Resampling.LANCZOS)
    return Image.composite(top, base, mask if mask.mode == "L" else mask.convert("L"))
