"""Specification of Kling's Webhook Signature, as values: the secrets, the headers, the
timestamp rule and the decision (``_webhook_signature``), and Kling's own test vector."""

from __future__ import annotations

import argparse
import sys

import pytest

from kling_async import CallbackReceiver
from kling_async._webhook_signature import (
    ENV_VAR,
    TOLERANCE,
    Refusal,
    Signer,
    WebhookHeaders,
    read_headers,
    read_secrets,
)
from kling_async.testing import Fault, emulator_command
from kling_async.testing._signing import signature_headers, webhook_keys

# Kling's test vector (its "Webhook Signature" docs).
SECRET = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXR0ZXN0c2VjcmV0MTI="
MESSAGE_ID = "9876543210"
TIMESTAMP = 1781080794
BODY = (
    b'{"id":"1234567890","status":"succeeded","message":"",'
    b'"create_time":1781080778802,"update_time":1781080794151}'
)
SIGNATURE = "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="
OTHER = "whsec_b3RoZXJzZWNyZXRvdGhlcnNlY3JldG90aGVyc2VjcmV0MTI="


def vector_headers(signature: str = SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": signature,
    }


def test_klings_test_vector() -> None:
    """Kling's secret, id, timestamp and body give Kling's signature, and it verifies."""
    signer = Signer([SECRET])
    assert (SIGNATURE,) == signer.sign(MESSAGE_ID, TIMESTAMP, BODY)
    assert signer.check(read_headers(vector_headers()), BODY, TIMESTAMP) is None


def test_the_emulator_signs_the_test_vector_alike() -> None:
    """The emulator's own signing (no shared code) gives Kling's signature too."""
    headers = signature_headers(webhook_keys(SECRET), MESSAGE_ID, TIMESTAMP + 0.9, BODY, None)
    assert vector_headers() == headers


def test_a_changed_body_id_or_timestamp_is_forged() -> None:
    """The signature covers the id, the timestamp and every byte of the body."""
    signer = Signer([SECRET])
    assert Refusal.FORGED == signer.check(read_headers(vector_headers()), BODY + b" ", TIMESTAMP)
    moved = {**vector_headers(), "webhook-id": "9876543211"}
    assert Refusal.FORGED == signer.check(read_headers(moved), BODY, TIMESTAMP)
    later = {**vector_headers(), "webhook-timestamp": str(TIMESTAMP + 1)}
    assert Refusal.FORGED == signer.check(read_headers(later), BODY, TIMESTAMP)
    assert Refusal.FORGED == Signer([OTHER]).check(read_headers(vector_headers()), BODY, TIMESTAMP)


def test_a_timestamp_more_than_five_minutes_from_now_is_stale() -> None:
    """Up to 300 s either way is fresh; 301 s in the past or in the future is refused."""
    signer = Signer([SECRET])
    headers = read_headers(vector_headers())
    assert 300 == TOLERANCE
    for now in (TIMESTAMP - 300, TIMESTAMP, TIMESTAMP + 300):
        assert signer.check(headers, BODY, now) is None
    for now in (TIMESTAMP - 301, TIMESTAMP + 301):
        assert Refusal.STALE == signer.check(headers, BODY, now)


def test_rotation_any_signature_and_any_secret_may_match() -> None:
    """During a rotation the header carries several signatures; one match is enough, and a
    receiver may hold the old and the new secret."""
    other = Signer([OTHER]).sign(MESSAGE_ID, TIMESTAMP, BODY)[0]
    both = read_headers(vector_headers(f"{other} {SIGNATURE}"))
    assert Signer([SECRET]).check(both, BODY, TIMESTAMP) is None
    assert Signer([OTHER]).check(both, BODY, TIMESTAMP) is None
    alone = read_headers(vector_headers())
    assert Signer([OTHER, SECRET]).check(alone, BODY, TIMESTAMP) is None
    assert 2 == len(Signer([OTHER, SECRET]).sign(MESSAGE_ID, TIMESTAMP, BODY))


def test_headers_are_read_case_insensitively_from_mappings_and_asgi_pairs() -> None:
    """Any case of the names; a dict or ASGI's bytes pairs; other versions are ignored."""
    expected = WebhookHeaders(id=MESSAGE_ID, timestamp=TIMESTAMP, signatures=(SIGNATURE,))
    mixed = {
        "Webhook-Id": MESSAGE_ID,
        "WEBHOOK-TIMESTAMP": str(TIMESTAMP),
        "webhook-Signature": f"v1a,abc {SIGNATURE}",
        "Content-Type": "application/json",
    }
    assert expected == read_headers(mixed)
    pairs = [(name.encode(), value.encode()) for name, value in vector_headers().items()]
    assert expected == read_headers(pairs)


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-id": ""},
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": "1781080794.5"},
        {"webhook-timestamp": "01781080794"},
        {"webhook-signature": "v2,abc"},
        {"webhook-signature": " ".join([SIGNATURE] * 17)},
        {"webhook-id": "x" * 257},
        {"webhook-timestamp": "999999999999"},  # the year 33658: no date to sign it with
    ],
)
def test_malformed_headers_are_unsigned(change: dict[str, str]) -> None:
    """A missing, empty or malformed header reads as no signature at all."""
    assert read_headers({**vector_headers(), **change}) is None
    assert Refusal.UNSIGNED == Signer([SECRET]).check(None, BODY, TIMESTAMP)


def test_missing_or_repeated_headers_are_unsigned() -> None:
    """Each of the three must be there, once."""
    for name in vector_headers():
        fewer = {k: v for k, v in vector_headers().items() if k != name}
        assert read_headers(fewer) is None
    twice = [*vector_headers().items(), ("Webhook-Id", "other")]
    assert read_headers(twice) is None
    assert read_headers(None) is None


def test_secrets_from_the_argument_or_the_environment() -> None:
    """A str, a sequence (rotation), else the variable split at spaces or commas."""
    assert (SECRET,) == read_secrets(SECRET, f"{OTHER}")
    assert (SECRET, OTHER) == read_secrets([SECRET, OTHER], None)
    assert (SECRET, OTHER) == read_secrets(None, f" {SECRET}, {OTHER} ")
    assert (SECRET, OTHER) == read_secrets(None, f"{SECRET},{OTHER}")
    assert () == read_secrets(None, None)
    assert () == read_secrets(None, "  ")
    assert (SECRET.removeprefix("whsec_"),) == read_secrets(SECRET.removeprefix("whsec_"), None)


@pytest.mark.parametrize(
    "bad",
    ["", "whsec_", "whsec_not base64!", "whsec_abcde", "whsec_a,b,c", "hunter2-hunter2"],
)
def test_a_malformed_secret_is_a_value_error_that_never_echoes_it(bad: str) -> None:
    """Checked when the receiver is made; the message says which, never what."""
    with pytest.raises(ValueError) as caught:
        CallbackReceiver("https://x/cb", webhook_secret=[SECRET, bad])
    message = str(caught.value)
    assert "#2" in message
    assert bad.removeprefix("whsec_") not in message or not bad.removeprefix("whsec_")
    assert caught.value.__cause__ is None


def test_secret_types_are_checked() -> None:
    """bytes, numbers and empty sequences are refused."""
    with pytest.raises(TypeError):
        CallbackReceiver("https://x/cb", webhook_secret=SECRET.encode())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CallbackReceiver("https://x/cb", webhook_secret=[SECRET, 3])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        CallbackReceiver("https://x/cb", webhook_secret=[])


def test_the_environment_variable_is_read_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KLING_WEBHOOK_SECRET sets the secrets; the receiver's repr says signed, not what."""
    monkeypatch.setenv(ENV_VAR, f"{SECRET} {OTHER}")
    receiver = CallbackReceiver("https://x/cb")
    text = repr(receiver)
    assert "signed" in text
    for secret in (SECRET, OTHER):
        assert secret.removeprefix("whsec_")[:12] not in text
    assert "whsec" not in repr(Signer([SECRET]))
    monkeypatch.setenv(ENV_VAR, "whsec_???")
    with pytest.raises(ValueError, match=ENV_VAR) as caught:
        CallbackReceiver("https://x/cb")
    assert "???" not in str(caught.value)
    monkeypatch.delenv(ENV_VAR)
    assert "signed" not in repr(CallbackReceiver("https://x/cb"))


def test_without_the_extra_a_secret_is_a_clear_runtime_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No standardwebhooks: the error names the extra to install (no secret, no error)."""
    monkeypatch.setitem(sys.modules, "standardwebhooks", None)
    with pytest.raises(RuntimeError, match=r"pip install 'kling-async\[callbacks\]'"):
        CallbackReceiver("https://x/cb", webhook_secret=SECRET)
    monkeypatch.delenv(ENV_VAR, raising=False)
    CallbackReceiver("https://x/cb")


def test_the_emulators_signature_faults() -> None:
    """A bad signature is well formed but matches no secret; a stale one is aged `seconds`."""
    keys = webhook_keys(SECRET)
    signer = Signer([SECRET])
    bad = signature_headers(keys, MESSAGE_ID, TIMESTAMP, BODY, Fault.callback_bad_signature())
    assert Refusal.FORGED == signer.check(read_headers(bad), BODY, TIMESTAMP)
    stale = signature_headers(keys, MESSAGE_ID, TIMESTAMP, BODY, Fault.callback_stale(600))
    assert str(TIMESTAMP - 600) == stale["webhook-timestamp"]
    assert Refusal.STALE == signer.check(read_headers(stale), BODY, TIMESTAMP)
    assert signer.check(read_headers(stale), BODY, TIMESTAMP - 600) is None
    assert {} == signature_headers((), MESSAGE_ID, TIMESTAMP, BODY, None)
    with pytest.raises(ValueError):
        webhook_keys("whsec_!!")


def test_the_emulator_command_takes_webhook_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    """``--webhook-secret`` is repeatable (a rotation); a malformed one exits 2 without
    serving, and the error does not repeat it."""
    parser = argparse.ArgumentParser()
    run = emulator_command(parser)
    args = parser.parse_args(["--webhook-secret", SECRET, "--webhook-secret", OTHER])
    assert [SECRET, OTHER] == args.webhook_secret
    assert [] == parser.parse_args([]).webhook_secret
    bad = parser.parse_args(["--port", "0", "--webhook-secret", "whsec_!!sesame!!"])
    assert 2 == run(bad)
    err = capsys.readouterr().err
    assert "webhook secret #1" in err
    assert "sesame" not in err
