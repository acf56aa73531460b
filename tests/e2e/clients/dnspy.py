"""dnspy NAME [TYPE ...]: resolve NAME with dnspython, a stub resolver that shares no code with any
libc, configured from /etc/resolv.conf as a pod sees it (under `ip netns exec` that is the netns's
/etc/netns/<ns>/resolv.conf): its nameserver, search list and ndots. TYPEs default to A and AAAA.

Prints one address per line. When no TYPE gave an address, prints the exception name of the last
failure (NXDOMAIN, NoAnswer, ...) and exits 2. dnspython sends no EDNS unless told, so a large answer
comes back truncated over UDP and is retried over TCP: what tests/e2e/test_clients.py relies on.
"""

from __future__ import annotations

import sys

import dns.exception
import dns.resolver


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"usage: {argv[0]} NAME [TYPE ...]", file=sys.stderr)
        return 64
    name, types = argv[1], argv[2:] or ["A", "AAAA"]
    resolver = dns.resolver.Resolver(configure=True)
    resolver.lifetime = 5.0
    found, failure = False, ""
    for rdtype in types:
        try:
            answer = resolver.resolve(name, rdtype, search=True)
        except dns.exception.DNSException as e:
            failure = type(e).__name__
            continue
        for rr in answer:
            print(rr.to_text())
            found = True
    if not found:
        print(failure or "NoAnswer")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
