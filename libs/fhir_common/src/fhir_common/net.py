"""Small network helpers shared by benchmarks and tests that start services on real sockets."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it; a race with another process taking it
    before it is bound again is possible but harmless for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
