"""Provenance marking: what a finished result carries about where it came from.

`mark()` runs after the output pipeline (`output.finish_output`) on every result, under the
key's (or price group's) `provenance` mode:

* `off`: nothing is written; the result is exactly what the pipeline made (an upstream's
  manifest passes through when the bytes did, as before).
* `metadata` (the default): the XMP `Iptc4xmpExt:DigitalSourceType` (`xmp.with_source_type`;
  the image data is untouched). One exception: a result that passes through byte for byte
  with the upstream's C2PA manifest is left alone, because any added byte would break that
  manifest's hash binding; the manifest itself states the digital source type. Where the
  gateway re-encoded a signed result, the notes say exactly what was kept: the XMP digital
  source type and, in the job's notes, the upstream manifest's label and generator; not the
  manifest (it cannot be carried without a signature of the gateway's own).
* `signed`: the XMP field, then a C2PA manifest signed with the operator's key
  (`credentials.sign`): the upstream's manifest is its `parentOf` ingredient, the inputs
  are ingredients by hash. Without a configured key, `signed` acts as `metadata` and says so.

Pixels never change here: the tests compare the decoded images of every mode. Synchronous
(c2pa signs in native code): callers run it in a thread, as the pipeline itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from gateway import __version__
from gateway.images.credentials import (
    Claim,
    Ingredient,
    SigningError,
    SigningKey,
    read_manifest,
    sign,
)
from gateway.images.output import C2PA_LOST, Finished
from gateway.images.provenance import has_c2pa
from gateway.images.validate import sniff
from gateway.images.xmp import COMPOSITE, GENERATED, with_source_type

Mode = Literal["off", "metadata", "signed"]
MODES: tuple[Mode, ...] = ("off", "metadata", "signed")
log = logging.getLogger(__name__)
_MIME_OF_SNIFF = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True, slots=True)
class Origin:
    """What a result was made from: the upstream's bytes and the job's inputs (first one
    first, as stored), and by what."""

    upstream: bytes
    model: str
    channel_type: str
    edit: bool = False
    masked: bool = False
    inputs: Sequence[bytes] = ()


def _mime(data: bytes) -> str:
    return _MIME_OF_SNIFF.get(sniff(data) or "", "application/octet-stream")


def _upstream_label(data: bytes) -> str:
    found = read_manifest(data, _mime(data))
    if not found:
        return "an unreadable manifest"
    generator = ", ".join(found["claim_generator"]) or "unknown generator"
    return f"{found['active_manifest']} ({generator})"


def mark(done: Finished, origin: Origin, mode: Mode, key: SigningKey | None) -> Finished:
    """`done` carrying what `mode` asks for (module docstring), with notes on what was kept.
    A key that cannot sign (its command failed) leaves the XMP marking only, noted."""
    if mode == "off":
        return done
    notes = list(done.notes)
    if mode == "signed" and key is None:
        notes.append("provenance: signed was asked for, but no signing certificate is "
                     "configured; the result carries the IPTC digital source type only")
        mode = "metadata"
    upstream_signed = has_c2pa(origin.upstream)
    passed = done.data == origin.upstream
    if mode == "metadata" and passed and upstream_signed:
        notes.append("the upstream's C2PA manifest was kept byte for byte (it states the "
                     "digital source type); no XMP was added, it would break the manifest")
        return replace(done, notes=tuple(notes))
    source_type = COMPOSITE if origin.masked else GENERATED
    data, xmp_note = with_source_type(done.data, source_type, f"fluxgate {__version__}")
    if xmp_note:
        notes.append(xmp_note)
    if mode == "metadata":
        if upstream_signed and C2PA_LOST in notes:
            notes[notes.index(C2PA_LOST)] = (
                "the upstream's C2PA content credentials (manifest) were lost: the gateway "
                "re-encoded the image and signs nothing under provenance: metadata; kept: the "
                "IPTC digital source type in XMP, and here the lost manifest's label "
                f"{_upstream_label(origin.upstream)}; provenance: signed keeps the manifest "
                "itself as an ingredient")
        return replace(done, data=data, notes=tuple(notes))
    assert key is not None
    inputs = [Ingredient(d, _mime(d), f"input #{i + 1}", "componentOf")
              for i, d in enumerate(origin.inputs)]
    parent: Ingredient | None = None
    if upstream_signed:
        parent = Ingredient(origin.upstream, _mime(origin.upstream), "upstream result",
                            "parentOf")
    elif origin.edit and inputs:
        parent = replace(inputs.pop(0), relationship="parentOf")
    changes = [n for n in done.notes if n != C2PA_LOST]
    claim = Claim(generator=__version__, model=origin.model, channel_type=origin.channel_type,
                  when=datetime.now(UTC), masked=origin.masked, edit=origin.edit, parent=parent,
                  components=inputs, changes="; ".join(changes) or None)
    try:
        signed = sign(data, done.mime, claim, key)
    except SigningError as exc:  # fail open: the XMP marking stays, the job says why
        log.warning("C2PA signing failed: %s", exc)
        notes.append(f"the result could not be signed ({exc}); it carries the IPTC digital "
                     "source type only")
        return replace(done, data=data, notes=tuple(notes))
    notes = [n for n in notes if n != C2PA_LOST]
    kept = "; the upstream's manifest is its parentOf ingredient" if upstream_signed else ""
    action = "c2pa.edited" if parent else "c2pa.created"
    notes.append(f"signed with C2PA content credentials ({action}){kept}")
    return replace(done, data=signed, notes=tuple(notes))
