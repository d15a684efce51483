"""The operator's provenance set-up: which mode a job's result gets, and the signing key.

A job's mode is its key's own `provenance` setting when it has one, else its price group's
(`provenance.price_groups`), else `provenance.default` (`metadata`). `ProvenancePolicy` is
built once by `create_app` from the settings; the key files are read then, so a missing or
unreadable file stops the start with one clear line rather than failing every job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.images.credentials import SigningKey
from gateway.images.marking import Mode
from gateway.jobs.model import JobSpec
from gateway.settings import ProvenanceSettings, SigningSettings


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"provenance.signing.{what}: cannot read {path}: {exc.strerror}") \
            from exc


def signing_key(settings: SigningSettings) -> SigningKey | None:
    """The key `settings` describe, None when no certificate is configured. Raises
    ValueError (one line) for an unreadable file."""
    if settings.cert_file is None:
        return None
    chain = _read(settings.cert_file, "cert_file")
    key = _read(settings.key_file, "key_file") if settings.key_file is not None else None
    return SigningKey(alg=settings.alg, cert_chain=chain, private_key=key,
                      sign_command=tuple(settings.sign_command) if settings.sign_command
                      else None, command_input=settings.command_input,
                      tsa_url=settings.tsa_url)


@dataclass(frozen=True, slots=True)
class ProvenancePolicy:
    """The modes and the signing identity, for the job service and the verify surfaces."""

    default: Mode = "metadata"
    price_groups: dict[str, Mode] = field(default_factory=dict)
    key: SigningKey | None = None
    trust_anchors: str | None = None  # PEM

    @classmethod
    def from_settings(cls, settings: ProvenanceSettings) -> ProvenancePolicy:
        """Raises ValueError when a configured file cannot be read."""
        anchors = None
        if settings.trust_anchors_file is not None:
            try:
                anchors = settings.trust_anchors_file.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"provenance.trust_anchors_file: cannot read "
                                 f"{settings.trust_anchors_file}") from exc
        return cls(default=settings.default, price_groups=dict(settings.price_groups),
                   key=signing_key(settings.signing), trust_anchors=anchors)

    def mode_for(self, spec: JobSpec) -> Mode:
        """The mode of `spec`'s result: its key's, else its price group's, else the default."""
        if spec.provenance is not None:
            return spec.provenance
        if spec.price_group is not None and spec.price_group in self.price_groups:
            return self.price_groups[spec.price_group]
        return self.default
