"""The output pipeline and its encoder (pure functions): every mode an upstream may answer,
the fit policy's arithmetic, quality rules and colour profiles."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image, JpegImagePlugin

from gateway.images.encode import encode
from gateway.images.output import crop_box, finish_output, pad_size
from gateway.images.provenance import has_c2pa
from gateway.images.stitch import stitch
from gateway.images.validate import sniff, validate_image
from tests.api.test_fidelity import decoded as opened
from tests.api.test_fidelity import encode as save
from tests.api.test_fidelity import max_diff
from tests.images.credentials import sign
from tests.images.profiles import display_p3, gray_profile


def rgba_half_clear(size: tuple[int, int] = (64, 32)) -> Image.Image:
    im = Image.new("RGBA", size, (200, 30, 30, 255))
    im.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    return im


@pytest.mark.parametrize(("source", "fmt", "asked", "check"), [
    pytest.param(rgba_half_clear(), "PNG", "jpeg", "white under transparency",
                 id="RGBA -> jpeg: flattened on white"),
    pytest.param(rgba_half_clear(), "PNG", "webp", "alpha kept", id="RGBA -> webp: alpha kept"),
    pytest.param(Image.new("I;16", (64, 32), 32896), "PNG", "jpeg", "mid gray",
                 id="16-bit gray -> jpeg: scaled, not white"),
    pytest.param(Image.new("L", (64, 32), 128), "PNG", "webp", "mid gray", id="L -> webp"),
    pytest.param(Image.new("CMYK", (64, 32), (0, 0, 0, 127)), "JPEG", "png", "mid gray",
                 id="CMYK jpeg -> png"),
])
def test_every_mode_converts_to_every_format(source: Image.Image, fmt: str, asked: Any,
                                             check: str) -> None:
    done = finish_output(save(source, fmt), asked_format=asked)
    assert sniff(done.data) == asked.upper()
    out = opened(done.data)
    if check == "white under transparency":
        assert out.convert("RGB").getpixel((4, 4)) == (255, 255, 255)
        assert max_diff(out.crop((40, 0, 64, 32)), Image.new("RGB", (24, 32), (200, 30, 30))) <= 4
    elif check == "alpha kept":
        assert out.mode == "RGBA" and out.getpixel((4, 4))[3] == 0
        assert out.getpixel((60, 4)) == (200, 30, 30, 255)
    else:
        assert all(abs(v - 128) <= 2 for v in out.convert("RGB").getpixel((10, 10)))


@pytest.mark.parametrize(("size", "ratio", "box"), [
    ((1024, 1024), 16 / 9, (0, 224, 1024, 800)),
    ((1200, 900), 7 / 3, (0, 193, 1200, 707)),
    ((1024, 1024), 9 / 16, (224, 0, 800, 1024)),
])
def test_crop_box_is_the_centre_at_the_ratio(size: tuple[int, int], ratio: float,
                                             box: tuple[int, int, int, int]) -> None:
    assert crop_box(size, ratio) == box


def test_pad_never_shrinks() -> None:
    assert pad_size((1024, 1024), 16 / 9) == (1821, 1024)
    assert pad_size((1392, 752), 1.0) == (1392, 1392)


def test_pad_to_jpeg_is_white() -> None:
    done = finish_output(save(Image.new("RGB", (100, 100), (0, 0, 255)), "PNG"),
                         asked_format="jpeg", asked_ratio=2.0, fit="pad")
    out = opened(done.data).convert("RGB")
    assert out.size == (200, 100)
    assert min(out.getpixel((5, 50))) >= 250 and out.getpixel((100, 50))[2] > 240
    assert any("padded" in n for n in done.notes)


def test_nothing_to_do_passes_the_bytes_through() -> None:
    data = save(Image.new("RGB", (1392, 752), (1, 2, 3)), "JPEG", quality=70)
    done = finish_output(data, asked_format="jpeg", asked_ratio=16 / 9, bucket=(1392, 752),
                         quality=95)
    assert done.data is data and done.notes == ()


@pytest.mark.parametrize(("quality", "sampling"), [(None, 0), (90, 0), (89, 2), (40, 2)])
def test_jpeg_chroma_is_full_from_quality_90(quality: int | None, sampling: int) -> None:
    out = opened(encode(Image.new("RGB", (32, 32), (9, 200, 9)), "jpeg", quality=quality))
    assert JpegImagePlugin.get_sampling(out) == sampling


def test_a_profile_is_written_only_onto_its_own_colour_space() -> None:
    p3 = display_p3()
    rgb = opened(encode(Image.new("RGB", (8, 8)), "png", icc_profile=p3))
    gray = opened(encode(Image.new("L", (8, 8)), "png", icc_profile=p3))
    assert rgb.info.get("icc_profile") == p3
    assert gray.info.get("icc_profile") is None  # an RGB profile on gray numbers is wrong


def test_rotated_input_keeps_its_profile() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    p3 = display_p3()
    data = save(Image.new("RGB", (40, 20), (200, 30, 30)), "JPEG", icc_profile=p3,
                exif=exif.tobytes())
    out = validate_image(data, param="image", max_bytes=10**7, max_pixels=10**7)
    assert opened(out.data).info.get("icc_profile") == p3


def test_stitch_keeps_a_shared_profile_and_converts_mixed_ones_to_srgb() -> None:
    p3 = display_p3()
    red_p3 = save(Image.new("RGB", (20, 20), (233, 54, 40)), "PNG", icc_profile=p3)
    red_srgb = save(Image.new("RGB", (20, 20), (255, 0, 0)), "PNG")
    shared = opened(stitch([red_p3, red_p3]).data)
    assert shared.info.get("icc_profile") == p3
    mixed = opened(stitch([red_p3, red_srgb]).data).convert("RGB")
    assert "icc_profile" not in mixed.info or not mixed.info["icc_profile"]
    left, right = mixed.getpixel((5, 5)), mixed.getpixel((25, 5))
    assert max(abs(a - b) for a, b in zip(left, right, strict=True)) <= 6  # the same red


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                           ("WEBP", "image/webp")])
def test_c2pa_manifest_is_found_where_the_specification_embeds_it(fmt: str, mime: str) -> None:
    plain = save(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
    signed = sign(plain, mime)
    assert has_c2pa(signed) and not has_c2pa(plain)
    assert not has_c2pa(signed[:40])  # cut short: no crash, no claim
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = sign(save(Image.new("RGB", (16, 8)), fmt, exif=exif.tobytes()), mime)
    notes: list[str] = []
    validate_image(rotated, param="image", max_bytes=10**7, max_pixels=10**7, notes=notes)
    assert notes and notes[0].endswith("its C2PA content credentials were not kept")


@pytest.mark.parametrize("fit", ["crop", "pad", "pass"])
def test_masked_result_off_the_input_ratio_follows_the_fit(fit: Any) -> None:
    """A square answered to a 2:1 input, fully masked: crop takes its middle band, pad scales
    it inside with the original at the sides, pass stretches it; always the input's size."""
    original = Image.new("RGB", (200, 100), (255, 0, 0))
    answer = Image.new("RGB", (400, 400), (0, 0, 255))
    answer.paste((0, 255, 0), (0, 100, 400, 300))  # the 2:1 middle band is green
    mask = save(Image.new("L", (200, 100), 255), "PNG")
    done = finish_output(save(answer, "PNG"), asked_format="png", fit=fit,
                         original=save(original, "PNG"), mask=mask)
    out = opened(done.data).convert("RGB")
    assert out.size == (200, 100)
    if fit == "crop":
        assert max_diff(out, Image.new("RGB", (200, 100), (0, 255, 0))) <= 1
    elif fit == "pad":  # the square is 100x100 in the middle; the original shows at the sides
        assert out.getpixel((10, 50)) == (255, 0, 0) and out.getpixel((190, 50)) == (255, 0, 0)
        assert out.getpixel((100, 50)) == (0, 255, 0) and out.getpixel((100, 5))[2] > 200
    else:  # stretched: the blue bands show at the top and bottom
        assert out.getpixel((100, 5))[2] > 200 and out.getpixel((100, 50)) == (0, 255, 0)
    assert (fit == "pass") == (not any("before the mask was applied" in n for n in done.notes))


def test_a_gray_inputs_profile_that_cannot_be_kept_is_noted() -> None:
    """A masked edit of a grayscale input with a GRAY profile comes back RGB: the profile
    cannot go onto RGB pixels, and the job says so instead of dropping it silently."""
    icc = gray_profile()
    original = save(Image.new("L", (120, 80), 100), "PNG", icc_profile=icc)
    assert Image.open(io.BytesIO(original)).info.get("icc_profile") == icc
    mask = Image.new("L", (120, 80), 0)
    mask.paste(255, (60, 0, 120, 80))
    done = finish_output(save(Image.new("RGB", (120, 80), (0, 0, 255)), "PNG"),
                         asked_format="png", original=original, mask=save(mask, "PNG"))
    out = opened(done.data)
    assert out.mode == "RGB" and out.info.get("icc_profile") is None
    assert any("GRAY" in n and "was not kept" in n for n in done.notes), done.notes
