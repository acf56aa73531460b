"""Small network helpers shared by tests (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from dnslib import DNSRecord


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` for both UDP and TCP right now (DNS listens on both)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind((host, 0))
            port: int = u.getsockname()[1]
            t.bind((host, port))
            if port > 1024:
                return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


def program(proc: subprocess.Popen[bytes]) -> str:
    """The program `proc` runs, for messages."""
    args = proc.args
    first = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
    return os.fsdecode(first)


def wait_dns_ready(port: int, proc: subprocess.Popen[bytes], name: str, deadline: float = 5.0) -> None:
    """Until a DNS server started as `proc` answers a question for `name` on 127.0.0.1:port."""
    q = DNSRecord.question(name).pack()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{program(proc)} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.1)
        try:
            s.sendto(q, ("127.0.0.1", port))
            s.recvfrom(4096)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise RuntimeError(f"{program(proc)} did not answer")
