"""The SSRF address policy: which hosts and IP addresses a user-supplied URL may reach.

Rules (see reliability.md §2.3): an address is public only when `ipaddress` calls it global AND
it is outside an explicit block list, because the stdlib flags alone have been wrong across
patch releases (`::ffff:127.0.0.1` is not loopback, `100.64.0.1` is neither private nor
global, `64:ff9b::7f00:1` and `2002:7f00:1::` report global on 3.11.7). IPv4 hidden in IPv6 is
handled this way:

* IPv4-mapped `::ffff:a.b.c.d` and NAT64 `64:ff9b::a.b.c.d` are unwrapped and the IPv4 address
  is judged (NAT64 is how DNS64 networks reach every IPv4-only host, so it cannot be refused
  wholesale);
* 6to4 `2002::/16`, Teredo `2001::/32`, local-use NAT64 `64:ff9b:1::/48`, translated
  `::ffff:0:0:0/96` and IPv4-compatible `::/96` are refused outright.

An operator's allow-list (hostnames, `*.suffix` wildcards, IP addresses or CIDRs, each with an
optional `:port`) overrides the policy for on-premise sources and for tests that serve images
from loopback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKED_IPV4: tuple[ipaddress.IPv4Network, ...] = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
))
BLOCKED_IPV6: tuple[ipaddress.IPv6Network, ...] = tuple(ipaddress.IPv6Network(n) for n in (
    "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/32", "2001:db8::/32",
    "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
BLOCKED_HOSTNAMES = frozenset({"localhost", "metadata", "metadata.google.internal",
                               "instance-data", "ip6-localhost", "ip6-loopback"})
BLOCKED_SUFFIXES = (".localhost", ".internal")


#: schemes the fetcher never follows. They are still recognised in prompt text, where an http(s)
#: URL would be taken as an input image, so that they are refused (`url_not_allowed`) instead
#: of reaching an upstream as words (`file:///etc/passwd`, `gopher://127.0.0.1:6379/_...`).
REFUSED_SCHEMES = ("file", "gopher", "ftp", "ftps", "sftp", "tftp", "dict", "ldap", "ldaps",
                   "smb", "jar", "netdoc", "telnet")
#: a bracketed IPv6 literal host (`[2001:db8::1]`, `[fe80::1%25eth0]`)
IPV6_HOST = r"\[[0-9A-Fa-f:.]+(?:%[\w.~-]+)?\]"


def url_in_text(chars: str) -> str:
    """A regex (no flags) for a URL written in text, whose characters after `scheme:` are the
    class `chars`: http(s) with a name, IPv4 or bracketed IPv6 host, or a refused scheme's
    form (`file:/x`, `gopher://...`). Compile it with re.IGNORECASE."""
    schemes = "|".join(REFUSED_SCHEMES)
    return rf"(?:https?://(?:{IPV6_HOST}{chars}*|{chars}+)|(?:{schemes}):{chars}+)"


def refused_scheme(ref: str) -> str | None:
    """The scheme of `ref` when it is one of `REFUSED_SCHEMES` (`file:...`), else None."""
    head, sep, _ = ref.partition(":")
    return head.lower() if sep and head.lower() in REFUSED_SCHEMES else None


def normalise_host(host: str) -> str:
    """`host` lowercased, without brackets, trailing dots or NUL bytes."""
    return host.replace("\x00", "").strip().strip("[]").rstrip(".").lower()


def is_blocked_hostname(host: str) -> bool:
    """Whether the name itself is refused (localhost, cloud metadata names, `*.internal`)."""
    name = normalise_host(host)
    return name in BLOCKED_HOSTNAMES or name.endswith(BLOCKED_SUFFIXES) or not name


def parse_ip(text: str) -> IPAddress | None:
    """The address written in canonical IPv4/IPv6 notation (scope id dropped), else None.

    Only strict notation counts: `127.1` or `2130706433` are names to resolve, not addresses.
    """
    text = normalise_host(text).split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped or NAT64 (64:ff9b::/96) IPv6 address, else None."""
    if ip in _MAPPED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether `ip` is a public unicast address a user URL may reach (see the module rules)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        v4 = embedded_ipv4(ip)
        if v4 is not None:
            return is_public_address(v4)
        if any(ip in net for net in BLOCKED_IPV6):
            return False
    elif any(ip in net for net in BLOCKED_IPV4):
        return False
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True, slots=True)
class AllowList:
    """Destinations allowed despite the policy: exact hostnames, `*.suffix`, IPs and CIDRs,
    each either on any port or, written `host:port` / `[v6]:port` / `cidr:port`, on one port.

    A host allowed by name may resolve to any address; an address inside an allowed network
    may be reached whatever name led to it. A port-less entry allows every port.
    """

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    host_ports: frozenset[tuple[str, int]] = frozenset()
    suffix_ports: tuple[tuple[str, int], ...] = ()
    network_ports: tuple[tuple[IPNetwork, int], ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str], *, setting: str = "fetch_allow") -> AllowList:
        """Parse settings entries; raises ValueError naming `setting` and a malformed entry."""
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        host_ports: set[tuple[str, int]] = set()
        suffix_ports: list[tuple[str, int]] = []
        network_ports: list[tuple[IPNetwork, int]] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            bad = ValueError(f"{setting}: {raw!r} is not a hostname, *.suffix, IP or CIDR, "
                             "optionally with :port")
            try:
                target, port = _split_port(entry)
            except ValueError:
                raise bad from None
            try:
                net = ipaddress.ip_network(target.strip("[]"), strict=False)
            except ValueError:
                pass
            else:
                if port is None:
                    networks.append(net)
                else:
                    network_ports.append((net, port))
                continue
            name = normalise_host(target)
            if name.startswith("*.") and "*" not in name[2:] and "/" not in name:
                if port is None:
                    suffixes.append(name[1:])
                else:
                    suffix_ports.append((name[1:], port))
            elif name and not any(c in name for c in "/*:[]@"):
                if port is None:
                    hosts.add(name)
                else:
                    host_ports.add((name, port))
            else:
                raise bad
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks), frozenset(host_ports),
                   tuple(suffix_ports), tuple(network_ports))

    def allows_host(self, host: str, port: int | None = None) -> bool:
        """Whether `host` is allowed by name (on `port`; None matches port-less entries only)."""
        name = normalise_host(host)
        if name in self.hosts or (bool(self.suffixes) and name.endswith(self.suffixes)):
            return True
        if port is None:
            return False
        return (name, port) in self.host_ports or any(
            p == port and name.endswith(s) for s, p in self.suffix_ports)

    def allows_address(self, ip: IPAddress, port: int | None = None) -> bool:
        """Whether `ip` is inside an allowed network (on `port`, as for `allows_host`)."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (v4 := embedded_ipv4(ip)) is not None:
            candidates.append(v4)
        nets = [*self.networks, *(n for n, p in self.network_ports if port is not None
                                  and p == port)]
        return any(c.version == net.version and c in net for c in candidates for net in nets)


_BRACKETED = re.compile(r"^(\[[^\]]*\]):(\d+)$")


def _split_port(entry: str) -> tuple[str, int | None]:
    """(`host`, port) of `host:port` or `[v6]:port`; (entry, None) without a port."""
    if m := _BRACKETED.match(entry):
        target, digits = m.group(1), m.group(2)
    elif entry.count(":") == 1:
        target, _, digits = entry.partition(":")
        if not digits.isdigit():
            raise ValueError(entry)
    else:
        return entry, None
    port = int(digits)
    if not 0 < port < 65536 or not target:
        raise ValueError(entry)
    return target, port
