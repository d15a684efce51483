"""Standard Webhooks signing: the 7 cases of reliability.md §1.1, checked with the official
`standardwebhooks` verifier, plus the sealed storage of per-request secrets."""

from __future__ import annotations

import json
import random
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.webhooks.signing import (
    SecretBox,
    SecretError,
    Signer,
    generate_secret,
    load_or_create_secret,
    parse_secret,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NEGATIVE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="


def signed_now(signer: Signer, body: bytes, *, offset: int = 0,
               msg_id: str = MSG_ID) -> dict[str, str]:
    return signer.headers(msg_id, int(time.time()) + offset, body)


def test_1_signer_reproduces_the_test_vector() -> None:
    signature = Signer.from_secret(SECRET).signature(MSG_ID, TIMESTAMP, BODY)
    assert signature == EXPECTED
    assert signature != NEGATIVE
    assert len(parse_secret(SECRET)) == 24


def test_2_official_verifier_accepts_1000_deliveries() -> None:
    signer = Signer.from_secret(SECRET)
    verifier = Webhook(SECRET)
    rng = random.Random(7)
    for i in range(1000):
        payload = {"id": f"job_{i}", "seed": rng.randrange(2**32), "text": "é ✓ " * (i % 5),
                   "data": [{"url": f"http://x/files/{i}.png"}] * (i % 3)}
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = signed_now(signer, body, msg_id=f"msg_{i:06d}")
        assert verifier.verify(body, headers) == payload


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_3_a_missing_header_is_rejected(missing: str) -> None:
    headers = signed_now(Signer.from_secret(SECRET), BODY)
    del headers[missing]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers)


@pytest.mark.parametrize("offset", [-301, 301])
def test_4_a_timestamp_301_s_off_is_rejected(offset: int) -> None:
    headers = signed_now(Signer.from_secret(SECRET), BODY, offset=offset)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers)
    # ...while 299 s off still passes
    ok = signed_now(Signer.from_secret(SECRET), BODY, offset=299 if offset > 0 else -299)
    Webhook(SECRET).verify(BODY, ok)


def test_5_one_changed_byte_is_rejected() -> None:
    headers = signed_now(Signer.from_secret(SECRET), BODY)
    for i in range(len(BODY)):
        tampered = BODY[:i] + bytes([BODY[i] ^ 0x01]) + BODY[i + 1:]
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(tampered, headers)


def test_6_three_bad_signatures_and_one_good_are_accepted() -> None:
    headers = signed_now(Signer.from_secret(SECRET), BODY)
    good = headers["webhook-signature"]
    other = Signer.from_secret(generate_secret()).signature(MSG_ID, 1, BODY)
    headers["webhook-signature"] = " ".join([NEGATIVE, other, "v1,AAAA", good])
    Webhook(SECRET).verify(BODY, headers)
    headers["webhook-signature"] = " ".join([NEGATIVE, other, "v1,AAAA"])
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers)


def test_7_secret_with_and_without_whsec_prefix() -> None:
    headers = signed_now(Signer.from_secret(SECRET), BODY)
    Webhook(SECRET).verify(BODY, headers)
    Webhook(SECRET.removeprefix("whsec_")).verify(BODY, headers)
    # without the prefix a secret signs exactly as with it: the verifier reads both alike
    bare = signed_now(Signer.from_secret(SECRET.removeprefix("whsec_")), BODY)
    Webhook(SECRET).verify(BODY, bare)
    Webhook(SECRET.removeprefix("whsec_")).verify(BODY, bare)


def test_rotation_signs_with_every_key() -> None:
    old, new = generate_secret(), generate_secret()
    signer = Signer(parse_secret(new), parse_secret(old))
    headers = signed_now(signer, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)


def test_webhook_id_must_not_contain_a_dot() -> None:
    with pytest.raises(ValueError):
        Signer.from_secret(SECRET).headers("msg.1", TIMESTAMP, BODY)


@pytest.mark.parametrize("bad", ["", "short", "whsec_!!!not-base64", "x" * 300, "whsec_AAAA",
                                 "reseller-secret-42", "url_safe-base64_ab", "a b c d e f g h i",
                                 "abcdefghi"])
def test_unusable_secrets_are_refused(bad: str) -> None:
    with pytest.raises(SecretError):
        parse_secret(bad)


def test_generated_secret_is_kept_0600(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "webhook.key"
    secret = load_or_create_secret(path)
    assert secret.startswith("whsec_") and 24 <= len(parse_secret(secret)) <= 64
    assert load_or_create_secret(path) == secret
    assert path.stat().st_mode & 0o777 == 0o600


def test_secret_box_round_trip_and_tamper() -> None:
    box = SecretBox(b"k" * 32)
    sealed = box.seal("reseller-secret-42")
    assert "reseller" not in sealed
    assert box.seal("reseller-secret-42") != sealed  # fresh nonce
    assert box.open(sealed) == "reseller-secret-42"
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    for bad in (flipped, "v2." + sealed[3:], "v1.???"):
        with pytest.raises(SecretError):
            box.open(bad)
    with pytest.raises(SecretError):
        SecretBox(b"other" * 8).open(sealed)


def test_cli_prints_the_gateway_secret_and_replay_needs_a_finished_delivery(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from gateway.cli import app

    monkeypatch.setenv("FLUXGATE_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    first = runner.invoke(app, ["webhooks", "secret"])
    assert first.exit_code == 0, first.output
    assert first.output.strip() == (tmp_path / "webhook.key").read_text().strip()
    assert runner.invoke(app, ["webhooks", "secret"]).output == first.output
    missing = runner.invoke(app, ["webhooks", "replay", "msg_nope"])
    assert missing.exit_code == 1
