"""Pod addresses for the node simulator: one loopback address per pod.

Test infrastructure. Linux routes all of 127.0.0.0/8 to ``lo``, so each pod can listen on
its own address (its "network namespace") and two pods never clash on a port.
Addresses are handed out round-robin so a released address is not reused at once (a
scraper that still targets the old pod must not silently reach a new one).
"""

from __future__ import annotations

import ipaddress
import threading


class AddressPool:
    """Allocates host addresses of ``cidr`` (skipping the first and the last)."""

    def __init__(self, cidr: str) -> None:
        network = ipaddress.ip_network(cidr, strict=False)
        if not network.is_loopback:
            raise ValueError(f"pod CIDR {cidr} is not loopback: pods run on this host")
        self._first = int(network.network_address) + 2
        self._last = int(network.broadcast_address) - 1
        if self._last < self._first:
            raise ValueError(f"pod CIDR {cidr} is too small")
        self._next = self._first
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            size = self._last - self._first + 1
            for _ in range(size):
                candidate = self._next
                self._next = self._first if candidate >= self._last else candidate + 1
                if candidate not in self._used:
                    self._used.add(candidate)
                    return str(ipaddress.ip_address(candidate))
        raise RuntimeError("pod CIDR exhausted")

    def reserve(self, address: str) -> bool:
        """Take a specific address (a pod that already had it); False if taken or foreign."""
        value = int(ipaddress.ip_address(address))
        with self._lock:
            if not self._first <= value <= self._last or value in self._used:
                return False
            self._used.add(value)
            return True

    def release(self, address: str) -> None:
        with self._lock:
            self._used.discard(int(ipaddress.ip_address(address)))
