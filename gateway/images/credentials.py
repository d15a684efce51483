"""C2PA content credentials: signing a result's manifest and reading what a file carries.

Built on `c2pa-python` (the Content Authenticity Initiative's binding of c2pa-rs). What a
signed result's manifest says (`sign`):

* the generator: `claim_generator_info` = fluxgate and its version; every action's
  `softwareAgent` the same, its `parameters` the model and the channel's type;
* the action: `c2pa.created` (digital source type `trainedAlgorithmicMedia`) for a generated
  image; `c2pa.opened` of the parent and then `c2pa.edited` (`trainedAlgorithmicMedia`, or
  `compositeWithTrainedAlgorithmicMedia` for a masked edit) for an edit or a re-encode;
  each action carries the time (`when`);
* the ingredients, each named by its SHA-256 (`instance_id = "sha256:<hex>"`): the upstream's
  own result as the `parentOf` ingredient when it carried a manifest (so that manifest is kept,
  whole, inside ours), else the edited input; the other inputs as `componentOf`. An ingredient
  that carried a manifest keeps it in the store.

The private key is either a PEM file read at start-up, or kept outside the process: a command
(a KMS or HSM hook) is given the bytes' digest on stdin and prints the signature (DER or raw
`r||s` for ECDSA), `SigningKey.sign_command`. No thumbnails are embedded (the manifest stays a
few KB). Synchronous work (c2pa signs in native code): callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import c2pa

from gateway.images.validate import sniff
from gateway.images.xmp import COMPOSITE, GENERATED, source_type_of

Relationship = Literal["parentOf", "componentOf", "inputTo"]
_ALGS = {"es256": c2pa.C2paSigningAlg.ES256, "es384": c2pa.C2paSigningAlg.ES384,
         "es512": c2pa.C2paSigningAlg.ES512, "ps256": c2pa.C2paSigningAlg.PS256,
         "ps384": c2pa.C2paSigningAlg.PS384, "ps512": c2pa.C2paSigningAlg.PS512,
         "ed25519": c2pa.C2paSigningAlg.ED25519}
_DIGESTS = {"es256": "sha256", "es384": "sha384", "es512": "sha512", "ps256": "sha256",
            "ps384": "sha384", "ps512": "sha512"}
_NO_THUMBNAILS = {"builder": {"thumbnail": {"enabled": False}}}
SIGN_COMMAND_TIMEOUT = 10.0


class SigningError(Exception):
    """The manifest could not be signed (the key, the command or the file was refused)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An operator's C2PA signing identity: the certificate chain (PEM, end-entity first) and
    either the private key (PEM) or a command that signs a digest."""

    alg: str
    cert_chain: bytes
    private_key: bytes | None = None
    sign_command: tuple[str, ...] | None = None
    command_input: Literal["digest", "message"] = "digest"
    tsa_url: str | None = None

    def __post_init__(self) -> None:
        if self.alg not in _ALGS:
            raise ValueError(f"alg must be one of {sorted(_ALGS)}")
        if (self.private_key is None) == (self.sign_command is None):
            raise ValueError("give either a private key or a sign command")
        if self.command_input == "digest" and self.sign_command and self.alg not in _DIGESTS:
            raise ValueError(f"{self.alg} signs the message itself: use command_input: message")

    def signer(self) -> c2pa.Signer:
        """A fresh c2pa Signer (one per signature: a Builder consumes what it is given)."""
        if self.private_key is not None:
            return c2pa.Signer.from_info(c2pa.C2paSignerInfo(
                self.alg.encode(), self.cert_chain, self.private_key,
                self.tsa_url.encode() if self.tsa_url else None))
        return c2pa.Signer.from_callback(self._run_command, _ALGS[self.alg],
                                         self.cert_chain.decode(), self.tsa_url)

    def _run_command(self, message: bytes) -> bytes:
        assert self.sign_command is not None
        payload = hashlib.new(_DIGESTS[self.alg], message).digest() \
            if self.command_input == "digest" else message
        try:
            done = subprocess.run(list(self.sign_command), input=payload, capture_output=True,
                                  timeout=SIGN_COMMAND_TIMEOUT, check=True)
        except (OSError, subprocess.SubprocessError) as exc:  # c2pa sees b"" and fails the sign
            raise SigningError(f"the sign command failed: {type(exc).__name__}") from exc
        return done.stdout


@dataclass(frozen=True, slots=True)
class Ingredient:
    """An image the result was made from."""

    data: bytes
    mime: str
    title: str
    relationship: Relationship

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """What a result's manifest states. `parent` is the upstream's signed result, or the
    edited input; `components` the other inputs."""

    generator: str  # fluxgate's version
    model: str
    channel_type: str
    when: datetime
    masked: bool = False
    edit: bool = False
    parent: Ingredient | None = None
    components: Sequence[Ingredient] = field(default=())
    changes: str | None = None  # what the gateway did to the upstream's pixels, in words

    @property
    def source_type(self) -> str:
        return COMPOSITE if self.masked else GENERATED


def manifest_of(claim: Claim, mime: str) -> dict[str, Any]:
    """The manifest definition (c2pa's JSON) for `claim`; ingredients are labelled
    `parent` and `input-N` (as `add_ingredient` is called by `sign`)."""
    agent = {"name": "fluxgate", "version": claim.generator}
    params: dict[str, Any] = {"model": claim.model, "channel_type": claim.channel_type}
    when = claim.when.isoformat()
    components = [f"input-{i + 1}" for i in range(len(claim.components))]
    actions: list[dict[str, Any]]
    if claim.parent is None:
        if components:
            params["ingredientIds"] = components
        created = {"action": "c2pa.created", "digitalSourceType": claim.source_type,
                   "softwareAgent": agent, "when": when, "parameters": params}
        actions = [created]
    else:
        edited: dict[str, Any] = {
            "action": "c2pa.edited", "softwareAgent": agent, "when": when,
            "parameters": dict(params)}
        if claim.edit:
            edited["digitalSourceType"] = claim.source_type
        if components:
            edited["parameters"]["ingredientIds"] = components
        if claim.changes:
            edited["description"] = claim.changes
        actions = [{"action": "c2pa.opened", "when": when,
                    "parameters": {"ingredientIds": ["parent"]}}, edited]
    return {
        "claim_generator_info": [agent],
        "title": "fluxgate result",
        "format": mime,
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions}}],
    }


def _ingredient_json(ingredient: Ingredient, label: str) -> dict[str, Any]:
    return {"title": ingredient.title, "format": ingredient.mime, "label": label,
            "relationship": ingredient.relationship, "instance_id": f"sha256:{ingredient.sha256}"}


def sign(data: bytes, mime: str, claim: Claim, key: SigningKey) -> bytes:
    """`data` (a PNG, JPEG or WebP) with an embedded manifest store signed by `key` stating
    `claim`. The image data is not re-encoded. Raises SigningError."""
    out = io.BytesIO()
    try:
        with c2pa.Context.from_dict(_NO_THUMBNAILS) as ctx, key.signer() as signer, \
                c2pa.Builder(manifest_of(claim, mime), ctx) as builder:
            if claim.parent is not None:
                builder.add_ingredient(_ingredient_json(claim.parent, "parent"),
                                       claim.parent.mime, io.BytesIO(claim.parent.data))
            for i, part in enumerate(claim.components):
                builder.add_ingredient(_ingredient_json(part, f"input-{i + 1}"), part.mime,
                                       io.BytesIO(part.data))
            builder.sign(signer, mime, io.BytesIO(data), out)
    except c2pa.C2paError as exc:
        raise SigningError(f"C2PA signing failed: {exc}") from exc
    return out.getvalue()


def read_manifest(data: bytes, mime: str, *, trust_anchors: str | None = None,
                  ) -> dict[str, Any] | None:
    """What c2pa's Reader finds in `data`: a summary (validation state, the active manifest's
    generator, signer, actions and ingredients, failure codes), None when no manifest store
    is embedded. With `trust_anchors` (PEM) the signer's chain is checked against them, so the
    state can be `Trusted`; otherwise `Valid` is the best answer."""
    settings: dict[str, Any] = {"verify": {"verify_trust": trust_anchors is not None}}
    if trust_anchors is not None:
        settings["trust"] = {"trust_anchors": trust_anchors}
    try:
        with c2pa.Context.from_dict(settings) as ctx, \
                c2pa.Reader(mime, io.BytesIO(data), context=ctx) as reader:
            store = json.loads(reader.json())
            state = reader.get_validation_state()
    except c2pa.C2paError:
        return None
    label = store.get("active_manifest")
    active = store.get("manifests", {}).get(label, {}) if label else {}
    actions: list[dict[str, Any]] = []
    for assertion in active.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                actions.append({k: action[k] for k in ("action", "digitalSourceType", "when")
                                if k in action})
    failures = [f.get("code") for f in
                (store.get("validation_results") or {}).get("activeManifest", {})
                .get("failure", [])]
    signature = active.get("signature_info") or {}
    return {
        "validation_state": state,
        "active_manifest": label,
        "manifests": len(store.get("manifests", {})),
        "claim_generator": [f"{g.get('name')} {g.get('version', '')}".strip()
                            for g in active.get("claim_generator_info", [])],
        "signer": signature.get("common_name") or signature.get("issuer"),
        "signed_at": signature.get("time"),
        "actions": actions,
        "ingredients": [{"title": i.get("title"), "relationship": i.get("relationship"),
                         "instance_id": i.get("instance_id"),
                         "manifest": i.get("active_manifest")}
                        for i in active.get("ingredients", [])],
        "failures": failures,
    }


def describe(data: bytes, *, trust_anchors: str | None = None) -> dict[str, Any]:
    """What an image file carries about its origin, for `fluxgate verify` and
    `GET /files/{id}/credentials`: its format, the XMP IPTC digital source type (None when
    absent) and the C2PA manifest summary of `read_manifest` (None when absent)."""
    fmt = sniff(data)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(fmt or "")
    return {
        "format": mime,
        "digital_source_type": source_type_of(data) if mime else None,
        "c2pa": read_manifest(data, mime, trust_anchors=trust_anchors) if mime else None,
    }
