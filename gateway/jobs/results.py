"""Results: what the job service does to an upstream's image before storing it.

`finish_result()` gathers what the output pipeline (`gateway.images.output`) needs from the
job (the asked format, ratio and quality; the channel's `fit`; the stored mask and first input
of a masked edit) and runs the pipeline in a thread, followed by the provenance marking of the
job's mode (`gateway.images.marking`: XMP digital source type, and a C2PA manifest when
signing) in the same thread, so signing never runs on the event loop and adds only its own
time. The job service calls it once per result.
"""

from __future__ import annotations

import anyio

from adapters.buckets import bucket_for_ratio
from gateway.images.marking import Origin, mark
from gateway.images.output import Finished, Fit, finish_output
from gateway.jobs.model import JobSpec
from gateway.jobs.provenance import ProvenancePolicy
from gateway.storage.files import FileStore

_NO_PROVENANCE = ProvenancePolicy(default="off")


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
                        fit: Fit = "crop", provenance: ProvenancePolicy | None = None,
                        channel_type: str = "unknown") -> Finished:
    """The result `data` of `spec`, in the asked format, ratio and quality (see
    `gateway.images.output.finish_output`), marked as `provenance` says for the job, with
    notes on what was changed and kept. Raises InvalidRequest when the result is not a
    decodable image or cannot be masked, credentials.SigningError when signing fails."""
    policy = provenance or _NO_PROVENANCE
    mode = policy.mode_for(spec)
    original = mask = None
    first: tuple[int, int] | None = None
    inputs: list[bytes] = []
    if spec.input_file_ids:
        if spec.mask_file_id:
            _, mask = await files.read(spec.mask_file_id)
            input_row, original = await files.read(spec.input_file_ids[0])
        else:
            input_row = await files.row(spec.input_file_ids[0])
        first = (input_row.width or 0, input_row.height or 0)
        if mode == "signed" and policy.key is not None:  # the ingredients, by hash
            for i, file_id in enumerate(spec.input_file_ids):
                inputs.append(original if i == 0 and original is not None
                              else (await files.read(file_id))[1])
    ratio = asked_ratio(spec, first)
    origin = Origin(upstream=data, model=spec.model, channel_type=channel_type,
                    edit=spec.operation == "edit" or bool(spec.input_file_ids),
                    masked=mask is not None and original is not None, inputs=inputs)

    def work() -> Finished:
        done = finish_output(
            data, asked_format=spec.output_format, asked_ratio=ratio,
            bucket=bucket_for_ratio(ratio), quality=spec.quality, fit=fit, original=original,
            mask=mask)
        return mark(done, origin, mode, policy.key)

    return await anyio.to_thread.run_sync(work)
