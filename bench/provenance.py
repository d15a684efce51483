"""The cost of provenance on the result path (issue 15): time and bytes per result, per format
and mode, measured on the functions the job service runs for every result
(`gateway.jobs.results.finish_result` runs `output.finish_output` and then `marking.mark` in one
worker thread, so what `mark` costs is what a result is delayed by; the event loop is not).

    .venv/bin/python bench/provenance.py              # 1024x1024, 15 repeats per cell
    .venv/bin/python bench/provenance.py --quick      # 256x256, 3 repeats (a smoke run)

Cells: PNG, JPEG (q95) and lossless WebP results of a photo-like 1024x1024 picture, the
upstream's answer in the asked format (passed through) or in another one (converted);
modes `metadata` (XMP only), `signed` with a key file, `signed` through a sign command
(a Python hook signing the digest: the process start is most of its cost), and `signed` with
an upstream manifest carried as the parent ingredient. The signing chain is made here
(ES256, as the tests do). Reports the median and the p90 of `mark()` in ms and the bytes
added. Writes bench/results/provenance-latest.md and prints it.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.images.credentials import SigningKey
from gateway.images.marking import Mode, Origin, mark
from gateway.images.output import finish_output
from tests.images.credentials import make_chain, sign

HOOK = """
import sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), None)
digest = sys.stdin.buffer.read()
sys.stdout.buffer.write(key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))))
"""
PILLOW = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def photo(size: int) -> Image.Image:
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(size * size))
    grain = Image.frombytes("L", (size, size), noise)
    smooth = Image.linear_gradient("L").resize((size, size))
    return Image.merge("RGB", (Image.blend(grain, smooth, 0.7), smooth, grain.rotate(90)))


def encoded(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    options = {"jpeg": {"quality": 95}, "webp": {"lossless": True}, "png": {}}[fmt]
    im.save(buf, PILLOW[fmt], **options)
    return buf.getvalue()


def timed(fn, repeats: int) -> tuple[float, float, bytes]:  # type: ignore[no-untyped-def]
    times, out = [], b""
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.9))], out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size, repeats = (256, 3) if args.quick else (1024, 15)
    chain, pem, _ = make_chain("bench")
    tmp = Path(tempfile.mkdtemp())
    (tmp / "key.pem").write_bytes(pem)
    (tmp / "hook.py").write_text(HOOK)
    file_key = SigningKey(alg="es256", cert_chain=chain, private_key=pem)
    hook_key = SigningKey(alg="es256", cert_chain=chain,
                          sign_command=(sys.executable, str(tmp / "hook.py"), str(tmp / "key.pem")))
    im = photo(size)
    rows = []
    for fmt in ("png", "jpeg", "webp"):
        for answered in (fmt, "png" if fmt != "png" else "jpeg"):
            upstream = encoded(im, answered)
            done = finish_output(upstream, asked_format=fmt)  # type: ignore[arg-type]
            cells: list[tuple[str, Mode, SigningKey | None, bytes]] = [
                ("metadata", "metadata", None, upstream),
                ("signed (key file)", "signed", file_key, upstream),
                ("signed (sign command)", "signed", hook_key, upstream),
            ]
            signed_up = sign(upstream, MIME[answered])
            cells.append(("signed, upstream manifest as parent", "signed", file_key, signed_up))
            for label, mode, key, up in cells:
                base = finish_output(up, asked_format=fmt)  # type: ignore[arg-type]
                origin = Origin(upstream=up, model="flux-kontext-pro", channel_type="bfl")
                p50, p90, out = timed(lambda b=base, o=origin, m=mode, k=key: mark(b, o, m, k).data,
                                      repeats)
                rows.append((fmt, "passed through" if answered == fmt else f"from {answered}",
                             label, p50, p90, len(out) - len(base.data), len(done.data)))
    lines = [f"# Provenance cost per result ({size}x{size}, {repeats} repeats, "
             f"{time.strftime('%Y-%m-%d %H:%M')})", "",
             "| format | upstream answer | mode | mark() p50 ms | p90 ms | bytes added "
             "| result bytes |",
             "|---|---|---|---:|---:|---:|---:|"]
    for fmt, how, label, p50, p90, added, total in rows:
        lines.append(f"| {fmt} | {how} | {label} | {p50:.1f} | {p90:.1f} | {added:+,} "
                     f"| {total:,} |")
    text = "\n".join(lines) + "\n"
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "provenance-latest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
