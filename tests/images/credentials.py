"""Signing test images with C2PA content credentials (c2pa-python, the reference library), with
a throw-away CA and signer made here: what BFL's signed outputs look like to the gateway."""

from __future__ import annotations

import datetime
import functools
import io
import json
import struct
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_MANIFEST = {
    "claim_generator_info": [{"name": "fluxgate-tests-upstream", "version": "1"}],
    "title": "upstream result",
    "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
        "action": "c2pa.created",
        "digitalSourceType":
            "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"}]}}],
}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fluxgate tests")])


def _usage(*, sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=sign, crl_sign=sign, encipher_only=False,
                         decipher_only=False)


@functools.cache
def _signer_info() -> tuple[bytes, bytes]:
    """(PEM chain leaf+CA, PEM PKCS#8 key) of an ES256 signer under a fresh test CA."""
    chain, pem, _ = make_chain("test")
    return chain, pem


def make_chain(who: str) -> tuple[bytes, bytes, bytes]:
    """(PEM chain leaf+CA, PEM PKCS#8 key, PEM CA) of a fresh ES256 signer `who signer`
    under a fresh CA `who CA`: a C2PA-acceptable end-entity certificate (digitalSignature,
    an emailProtection EKU) and its CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(f"{who} CA"))
          .issuer_name(_name(f"{who} CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(_usage(sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name(f"{who} signer"))
            .issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = leaf.public_bytes(serialization.Encoding.PEM) + \
        ca.public_bytes(serialization.Encoding.PEM)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return chain, pem, ca.public_bytes(serialization.Encoding.PEM)


def upstream_ca() -> bytes:
    """The CA of the signer `sign` uses (what BFL's root is to a real verifier)."""
    chain, _ = _signer_info()
    return chain.split(b"-----END CERTIFICATE-----\n", 1)[1]


def reader_store(data: bytes, mime: str, anchors: bytes) -> tuple[str | None, dict[str, Any]]:
    """(validation state, manifest store JSON) as c2pa's own Reader gives them, the signers'
    chains checked against the CA certificates `anchors` (PEM)."""
    settings = {"verify": {"verify_trust": True}, "trust": {"trust_anchors": anchors.decode()}}
    with c2pa.Context.from_dict(settings) as ctx, \
            c2pa.Reader(mime, io.BytesIO(data), context=ctx) as reader:
        return reader.get_validation_state(), json.loads(reader.json())


def sign(data: bytes, mime: str) -> bytes:
    """`data` with an embedded, signed C2PA manifest."""
    chain, pem = _signer_info()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain, pem, None))
    out = io.BytesIO()
    with c2pa.Builder(_MANIFEST) as builder:
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def active_manifest(data: bytes, mime: str) -> str | None:
    """The active manifest's label as c2pa's Reader reads it, None when there is none."""
    try:
        reader = c2pa.Reader(mime, io.BytesIO(data))
    except c2pa.C2paError:
        return None
    label = json.loads(reader.json()).get("active_manifest")
    return str(label) if label else None


def image_data(data: bytes) -> bytes:
    """The encoded image itself, without any metadata: PNG's IDAT bodies, JPEG from its first
    SOS marker on, WebP's ALPH/VP8/VP8L chunk bodies. Equal between two files = the pixels were
    not re-encoded, whatever metadata was added around them."""
    if data.startswith(b"\x89PNG"):
        pos, out = 8, []
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos:pos + 4])
            if data[pos + 4:pos + 8] == b"IDAT":
                out.append(data[pos + 8:pos + 8 + length])
            pos += 12 + length
        return b"".join(out)
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while data[pos] == 0xFF and data[pos + 1] != 0xDA:
            (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
            pos += 2 + length
        return data[pos:]
    pos, out = 12, []
    while pos + 8 <= len(data):
        kind = data[pos:pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4:pos + 8])
        if kind in (b"ALPH", b"VP8 ", b"VP8L"):
            out.append(data[pos + 8:pos + 8 + length])
        pos += 8 + length + (length & 1)
    return b"".join(out)
