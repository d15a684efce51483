"""Results: what the job service does to an upstream's image before storing it.

`finish_result()` gathers what the output pipeline (`gateway.images.output`) needs from the
job (the asked format, ratio and quality; the channel's `fit`; the stored mask and first input
of a masked edit) and runs the pipeline in a thread. The job service calls it once per result.
"""

from __future__ import annotations

import anyio

from adapters.buckets import bucket_for_ratio
from gateway.images.output import Finished, Fit, finish_output
from gateway.jobs.model import JobSpec
from gateway.storage.files import FileStore


def asked_ratio(spec: JobSpec, first_input: tuple[int, int] | None) -> float:
    """The width/height a job asked for: FLUX.2/3's size, else its `aspect_ratio`, else the
    first input's, else 1."""
    if spec.family != "kontext" and spec.width and spec.height:
        return spec.width / spec.height
    if spec.aspect_ratio:
        w, h = spec.aspect_ratio.split(":")
        return float(w) / float(h)
    if first_input and first_input[0] > 0 and first_input[1] > 0:
        return first_input[0] / first_input[1]
    return 1.0


async def finish_result(files: FileStore, spec: JobSpec, data: bytes, *,
                        fit: Fit = "crop") -> Finished:
    """The result `data` of `spec`, in the asked format, ratio and quality (see
    `gateway.images.output.finish_output`), with notes on what was changed. Raises
    InvalidRequest when the result is not a decodable image or cannot be masked."""
    original = mask = None
    first: tuple[int, int] | None = None
    if spec.input_file_ids:
        if spec.mask_file_id:
            _, mask = await files.read(spec.mask_file_id)
            input_row, original = await files.read(spec.input_file_ids[0])
        else:
            input_row = await files.row(spec.input_file_ids[0])
        first = (input_row.width or 0, input_row.height or 0)
    ratio = asked_ratio(spec, first)
    return await anyio.to_thread.run_sync(lambda: finish_output(
        data, asked_format=spec.output_format, asked_ratio=ratio,
        bucket=bucket_for_ratio(ratio), quality=spec.quality, fit=fit, original=original,
        mask=mask))
