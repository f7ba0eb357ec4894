"""A free TCP port that a racing process cannot take before its server binds it."""
from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 20000
"""Above Ray's worker ports (10002-19999)."""


def port_below_ephemeral_range() -> int:
    """A port free on every interface, drawn below the kernel's ephemeral range and above Ray's worker
    ports. Every outgoing connection and port-0 bind on the machine (Ray's processes pick their ports
    that way) draws from the ephemeral range, so a port found free there can be taken before the server
    it is meant for binds it; one below it cannot."""
    low = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.is_file() else 32768
    for port in random.Random().sample(range(LOWEST, low), k=min(100, max(0, low - LOWEST))):
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {LOWEST}-{low - 1}")
