"""The output pipeline: an upstream's result turned into the image the client asked for.

`finish_output()` is the one place a result's pixels are changed before they are stored. Its
promises (README, "Edits and results"):

* **Format.** The bytes served are in the asked `output_format`. A result in another format
  (JPEG or GIF for `png`, PNG or WebP for `jpeg`, ...) is decoded (first frame) and encoded
  by `encode.encode`: PNG lossless, WebP lossless unless a quality is given, JPEG at the asked
  quality (default 95, 4:4:4 chroma at 90 and above).
* **Ratio, with a policy.** When the result's width/height is more than `RATIO_TOLERANCE`
  (2 %) off both the asked ratio and its Kontext bucket, the channel's `fit` applies:
  `crop` (the default) cuts the centre out at the asked ratio, `pad` letterboxes it
  (transparent for PNG/WebP, white for JPEG), `pass` serves it as it came. Never upscaled.
* **Masked edits** come back at the input's size: a result more than 2 % off the input's
  ratio and its bucket is first fitted to the input's ratio (`crop`: centre cut; `pad`:
  scaled to fit inside, the rest is the original; `pass`: stretched), converted into the
  input's ICC profile when it has one (`colour.convert`), then composited (`masks.blend`)
  and encoded in the asked format with the input's profile.
* **Pass-through.** A result already in the asked format and ratio, with no mask, is served
  byte for byte (metadata such as C2PA manifests kept). Where the pipeline re-encodes a
  result that carried a C2PA manifest, the notes say it was lost (`provenance.has_c2pa`);
  `marking.mark` then writes the provenance the job's mode asks for (and signs, keeping the
  lost manifest as an ingredient, under `provenance: signed`).

Every change made is described in `Finished.notes`, for the job record. Synchronous Pillow
work: callers run it in a thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from PIL import Image

from adapters.base import OutputFormat
from adapters.buckets import bucket_for_ratio
from gateway.errors import InvalidRequest
from gateway.images.colour import colour_space, convert, fits
from gateway.images.encode import DEFAULT_JPEG_QUALITY, FORMAT_OF, MIME, encode, has_alpha
from gateway.images.masks import blend, load_mask, open_result
from gateway.images.modes import to_8bit
from gateway.images.provenance import has_c2pa
from gateway.images.validate import sniff, upright_size

Fit = Literal["pass", "crop", "pad"]
C2PA_LOST = ("the upstream's C2PA content credentials (manifest) were lost: the gateway "
             "re-encoded the image without signing it")
RATIO_TOLERANCE = 0.02  # relative width/height error a result may have before `fit` applies


@dataclass(frozen=True, slots=True)
class Finished:
    """The bytes to store, their format and size, and what was done to them."""

    data: bytes
    format: OutputFormat
    width: int
    height: int
    notes: tuple[str, ...] = field(default=())

    @property
    def mime(self) -> str:
        return MIME[self.format]


def ratio_error(width: int, height: int, ratio: float) -> float:
    """How far `width/height` is from `ratio`, relative: |w/h / ratio - 1|."""
    return abs(width / height / ratio - 1)


def _ratio_label(ratio: float) -> str:
    f = Fraction(ratio).limit_denominator(32)
    return f"{f.numerator}:{f.denominator}"


def _within(size: tuple[int, int], targets: tuple[float, ...]) -> bool:
    return any(ratio_error(size[0], size[1], t) <= RATIO_TOLERANCE for t in targets)


def crop_box(size: tuple[int, int], ratio: float) -> tuple[int, int, int, int]:
    """The centred box of `size` with width/height `ratio` (as large as fits)."""
    w, h = size
    if w / h > ratio:
        cw, ch = max(1, min(w, round(h * ratio))), h
    else:
        cw, ch = w, max(1, min(h, round(w / ratio)))
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def pad_size(size: tuple[int, int], ratio: float) -> tuple[int, int]:
    """The smallest canvas at width/height `ratio` that holds `size`."""
    w, h = size
    if w / h > ratio:
        return w, max(h, math.ceil(w / ratio - 1e-9))
    return max(w, math.ceil(h * ratio - 1e-9)), h


def _fit(im: Image.Image, ratio: float, fit: Fit, fmt: OutputFormat) -> Image.Image:
    if fit == "crop":
        return im.crop(crop_box(im.size, ratio))
    canvas_size = pad_size(im.size, ratio)
    if fmt == "jpeg":
        canvas = Image.new("RGB", canvas_size, (255, 255, 255))
        src = im.convert("RGBA") if has_alpha(im) else im.convert("RGB")
    else:
        canvas = Image.new("RGBA", canvas_size, (0, 0, 0, 0))
        src = im.convert("RGBA")
    offset = ((canvas_size[0] - im.width) // 2, (canvas_size[1] - im.height) // 2)
    canvas.paste(src, offset, src if src.mode == "RGBA" else None)
    return canvas


def finish_output(data: bytes, *, asked_format: OutputFormat, asked_ratio: float | None = None,
                  bucket: tuple[int, int] | None = None, quality: int | None = None,
                  fit: Fit = "crop", original: bytes | None = None,
                  mask: bytes | None = None) -> Finished:
    """The result `data` as the client asked for it (see the module's promises).

    `asked_ratio` is the width/height asked for (None: no ratio check) and `bucket` the Kontext
    size expected for it (a result within 2 % of either passes). With `mask` (the stored mask)
    and `original` (the first, upright input), the result is composited at the original's
    size and `asked_ratio`/`bucket` are ignored. `quality` (0..100) applies where the gateway
    encodes. Raises InvalidRequest (`invalid_image`) when `data` is not a decodable image,
    and as `load_mask` does for a mask that does not fit the original.
    """
    fmt = sniff(data)
    if fmt is None:
        raise InvalidRequest("the upstream returned something that is not an image",
                             param="result", code="invalid_image")
    if mask is not None and original is not None:
        return _finish_masked(data, fmt, asked_format=asked_format, quality=quality, fit=fit,
                              original=original, mask=mask)
    notes: list[str] = []
    targets = tuple(t for t in (asked_ratio, bucket[0] / bucket[1] if bucket else None)
                    if t is not None)
    same_format = FORMAT_OF.get(fmt) == asked_format
    peeked = upright_size(data) if same_format else None
    if peeked is not None:  # right format: decided from the header, nothing decoded
        off = bool(targets) and not _within(peeked, targets)
        if not off or fit == "pass":
            if off:
                notes.append(_off_note(peeked, asked_ratio or targets[0], "served as it came "
                                       "(fit: pass)"))
            return Finished(data, asked_format, peeked[0], peeked[1], tuple(notes))
    with open_result(data) as im:
        size = im.size
        off = bool(targets) and not _within(size, targets)
        if same_format and (not off or fit == "pass"):  # (a header that could not be peeked)
            return Finished(data, asked_format, size[0], size[1], tuple(notes))
        out: Image.Image = im
        if off and fit != "pass":
            target = asked_ratio or targets[0]
            out = _fit(im, target, fit, asked_format)
            how = "centre-cropped" if fit == "crop" else "padded"
            notes.append(_off_note(size, target, f"{how} to {out.width}x{out.height} "
                                   f"(fit: {fit})"))
        elif off:
            notes.append(_off_note(size, asked_ratio or targets[0],
                                   "served at its own ratio (fit: pass)"))
        if not same_format:
            notes.append(f"the upstream answered {fmt}; converted to {asked_format.upper()}"
                         f"{_how_encoded(asked_format, quality)}")
        else:
            notes.append(f"re-encoded as {asked_format.upper()}"
                         f"{_how_encoded(asked_format, quality)}")
        encoded = encode(out, asked_format, quality=quality,
                         icc_profile=im.info.get("icc_profile"))
        if has_c2pa(data):
            notes.append(C2PA_LOST)
        return Finished(encoded, asked_format, out.width, out.height, tuple(notes))


def _finish_masked(data: bytes, fmt: str, *, asked_format: OutputFormat, quality: int | None,
                   fit: Fit, original: bytes, mask: bytes) -> Finished:
    notes: list[str] = []
    with open_result(original, param="image") as orig_im, open_result(data) as res_im:
        weights = load_mask(mask, image_size=orig_im.size, max_bytes=max(len(mask), 1),
                            max_pixels=max(orig_im.width * orig_im.height, 1))  # checked at intake
        ratio = orig_im.width / orig_im.height
        bw, bh = bucket_for_ratio(ratio)
        targets = (ratio, bw / bh)  # the input's ratio, or the Kontext bucket made for it
        top: Image.Image = res_im
        if not _within(res_im.size, targets) and fit != "pass":
            if fit == "crop":
                top = res_im.crop(crop_box(res_im.size, ratio))
                how = f"centre-cropped to {top.width}x{top.height}"
            else:
                top = _inside(res_im, orig_im)
                how = "scaled to fit inside it, the original around it"
            notes.append(f"the upstream answered {res_im.width}x{res_im.height}, "
                         f"{ratio_error(res_im.width, res_im.height, ratio):.1%} off the "
                         f"input's ratio; {how} (fit: {fit}) before the mask was applied")
        elif not _within(res_im.size, targets):
            notes.append(f"the upstream answered {res_im.width}x{res_im.height}, off the "
                         "input's ratio; stretched to the input's size (fit: pass)")
        icc = orig_im.info.get("icc_profile")
        if isinstance(icc, bytes) and icc and res_im.info.get("icc_profile") != icc:
            converted = convert(top, res_im.info.get("icc_profile"), icc)
            if converted is not None:
                top = converted
                notes.append("the upstream's result was converted into the input's colour "
                             "profile (ICC) before the mask was applied; the input's profile "
                             "is kept")
        merged = blend(orig_im, top, weights, alpha=asked_format != "jpeg")
        encoded = encode(merged, asked_format, quality=quality,
                         icc_profile=icc if isinstance(icc, bytes) else None)
        if isinstance(icc, bytes) and icc and not fits(icc, merged.mode):
            notes.append(f"the input's colour profile (ICC, {colour_space(icc) or 'unknown'}) "
                         f"does not fit the {merged.mode} result and was not kept; read the "
                         "result as sRGB")
        if FORMAT_OF.get(fmt) != asked_format:
            notes.append(f"the upstream answered {fmt}; the masked result was written as "
                         f"{asked_format.upper()}{_how_encoded(asked_format, quality)}")
        if has_c2pa(data):
            notes.append(C2PA_LOST)
        return Finished(encoded, asked_format, merged.width, merged.height, tuple(notes))


def _inside(result: Image.Image, original: Image.Image) -> Image.Image:
    """`result` scaled to fit inside the original's size, the original's pixels around it."""
    scale = min(original.width / result.width, original.height / result.height)
    size = (max(1, round(result.width * scale)), max(1, round(result.height * scale)))
    alpha = has_alpha(original)
    mode = "RGBA" if alpha else "RGB"
    canvas = to_8bit(original).convert(mode)
    scaled = to_8bit(result).convert(mode).resize(size, Image.Resampling.LANCZOS)
    canvas.paste(scaled, ((original.width - size[0]) // 2, (original.height - size[1]) // 2))
    return canvas


def _off_note(size: tuple[int, int], ratio: float, what: str) -> str:
    return (f"the upstream answered {size[0]}x{size[1]}, {ratio_error(*size, ratio):.1%} off "
            f"the asked {_ratio_label(ratio)}; {what}")


def _how_encoded(fmt: OutputFormat, quality: int | None) -> str:
    if fmt == "png":
        return " (lossless)"
    if fmt == "webp":
        return " (lossless)" if quality is None else f" (quality {quality})"
    q = DEFAULT_JPEG_QUALITY if quality is None else quality
    return f" (quality {q}, {'4:4:4' if q >= 90 else '4:2:0'})"
