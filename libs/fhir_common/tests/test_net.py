"""Ports for services that tests and benchmarks start on real sockets."""

from __future__ import annotations

import socket

from fhir_common.net import free_port, free_ports


def test_free_ports_are_different_and_bindable() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    for port in [*ports, free_port()]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: nothing holds it any more
