"""The URL checks shared by the base URL, the callback receiver's URL and media URLs."""

from __future__ import annotations

import ipaddress

import pytest

from kling_async import CallbackReceiver, InvalidArgumentError, KlingSession
from kling_async._urls import http_url, insecure, is_loopback, literal_address, refused_address


def test_one_parser_refuses_the_same_urls_everywhere() -> None:
    """No user info (a credential), no spaces, a valid port, http(s) with a host: for the
    base URL, the callback URL and a media URL alike."""
    bad = [
        "https://user:secret@gw.example.com/kling",
        "https://gw.example.com:99999/kling",
        "https://gw.example.com/a b",
        "ftp://gw.example.com/kling",
        "https:///kling",
    ]
    for url in bad:
        with pytest.raises(InvalidArgumentError) as caught:
            http_url(url, "url")
        assert "secret" not in str(caught.value)
        with pytest.raises(ValueError):
            KlingSession("key", base_url=url)
        with pytest.raises(ValueError):
            CallbackReceiver(url)
    with pytest.raises(TypeError):
        http_url(b"https://x", "url")


def test_loopback_in_every_spelling() -> None:
    loopback = ["localhost", "a.localhost", "LOCALHOST.", "127.0.0.1", "127.1", "2130706433"]
    loopback += ["0x7f.1", "::1", "[::1]", "::ffff:127.0.0.1"]
    assert all(map(is_loopback, loopback))
    assert not any(map(is_loopback, ["example.com", "10.0.0.1", "localhost.example", "::2"]))
    assert insecure(http_url("http://gw.example.com/", "u"))
    assert not insecure(http_url("http://[::ffff:127.0.0.1]:80/", "u"))
    assert not insecure(http_url("https://gw.example.com/", "u"))


def test_which_addresses_a_download_refuses() -> None:
    def why(text: str, *, allow_loopback: bool = False) -> str | None:
        address = literal_address(text)
        assert address is not None, text
        return refused_address(address, allow_loopback=allow_loopback)

    assert None is why("93.184.216.34")
    assert None is why("2606:2800:220:1:248:1893:25c8:1946")
    assert None is why("127.0.0.1", allow_loopback=True)
    assert None is why("::ffff:127.0.0.1", allow_loopback=True)
    assert "a loopback address" == why("127.0.0.1")
    assert "a link-local address" == why("::ffff:169.254.169.254", allow_loopback=True)
    assert "a link-local address" == why("64:ff9b::a9fe:a9fe")
    assert "a link-local address" == why("0xa9fea9fe")
    assert "a private address" == why("10.1.2.3")
    assert "a multicast address" == why("239.1.1.1")
    assert "an unspecified address" == why("0.0.0.0")
    assert "a reserved address" == why("100.64.0.1")
    assert None is literal_address("cdn.example.com")
    assert None is literal_address("1.2.3.4.5")
    assert ipaddress.ip_address("fe80::1") == literal_address("[fe80::1%eth0]")
