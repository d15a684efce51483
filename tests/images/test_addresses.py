"""The SSRF address policy, checked on addresses (not URL text) and on the stdlib's pitfalls."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.images.addresses import (
    AllowList,
    embedded_ipv4,
    is_blocked_hostname,
    is_public_address,
    parse_ip,
)

NOT_PUBLIC = [
    "0.0.0.0", "0.1.2.3", "10.1.2.3", "100.64.0.1", "100.100.100.200", "127.0.0.1",
    "127.255.255.254", "169.254.169.254", "169.254.170.2", "172.16.0.1", "172.31.255.255",
    "192.0.0.8", "192.0.2.1", "192.88.99.1", "192.168.0.1", "198.18.0.1", "198.51.100.1",
    "203.0.113.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "::", "::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:a9fe:a9fe",
    "::ffff:0:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::808:808", "100::1", "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:db8::1", "2002:7f00:1::", "2002:a9fe:a9fe::", "2002:808:808::", "fc00::1",
    "fd00:ec2::254", "fe80::1", "fe80::1%1", "fec0::1", "ff02::1",
]
PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111",
          "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_not_public(text: str) -> None:
    ip = parse_ip(text)
    assert ip is not None
    assert not is_public_address(ip)


@pytest.mark.parametrize("text", PUBLIC)
def test_public(text: str) -> None:
    ip = parse_ip(text)
    assert ip is not None
    assert is_public_address(ip)


def test_text_forms_are_names_not_addresses() -> None:
    for text in ("127.1", "2130706433", "0x7f000001", "0177.0.0.1"):
        assert parse_ip(text) is None  # so they go through the resolver and get judged there
    assert parse_ip("[::1]") == ipaddress.IPv6Address("::1")


def test_embedded_ipv4() -> None:
    assert embedded_ipv4(ipaddress.IPv6Address("::ffff:a9fe:a9fe")) == ipaddress.IPv4Address(
        "169.254.169.254")
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::7f00:1")) == ipaddress.IPv4Address(
        "127.0.0.1")
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "a.localhost", "metadata",
                                  "metadata.google.internal", "x.internal", "", "local\x00host"])
def test_blocked_hostnames(host: str) -> None:
    assert is_blocked_hostname(host)


def test_public_names_not_blocked_by_name() -> None:
    assert not is_blocked_hostname("images.example.com")
    assert not is_blocked_hostname("internal.example.com")


def test_allow_list() -> None:
    allow = AllowList.parse(["127.0.0.1", "10.0.0.0/8", "localhost", "*.corp", " ", "::1"])
    assert allow.allows_host("LOCALHOST") and allow.allows_host("files.corp")
    assert not allow.allows_host("corp") and not allow.allows_host("example.com")
    assert allow.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert allow.allows_address(ipaddress.ip_address("::1"))
    assert not allow.allows_address(ipaddress.ip_address("127.0.0.2"))
    with pytest.raises(ValueError, match="fetch_allow"):
        AllowList.parse(["http://x/"])


def test_allow_list_entries_with_ports() -> None:
    allow = AllowList.parse(["127.0.0.1:8080", "[::1]:9000", "cdn.example:8443", "*.corp:81",
                             "10.0.0.0/8:5000", "any.example"])
    loop4, loop6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    assert allow.allows_address(loop4, 8080) and not allow.allows_address(loop4, 8081)
    assert not allow.allows_address(loop4)  # a ported entry never matches "any port"
    assert allow.allows_address(loop6, 9000) and not allow.allows_address(loop6, 80)
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"), 8080)
    assert allow.allows_address(ipaddress.ip_address("10.1.2.3"), 5000)
    assert not allow.allows_address(ipaddress.ip_address("10.1.2.3"), 5001)
    assert allow.allows_host("CDN.example.", 8443) and not allow.allows_host("cdn.example", 443)
    assert allow.allows_host("a.corp", 81) and not allow.allows_host("a.corp", 80)
    assert allow.allows_host("any.example", 1234) and allow.allows_host("any.example")


@pytest.mark.parametrize("entry", ["host:0", "host:65536", "host:http", ":80", "[::1]:x",
                                   "a:b:c/d", "http://x/"])
def test_allow_list_bad_ports_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="result_hosts"):
        AllowList.parse([entry], setting="result_hosts")
