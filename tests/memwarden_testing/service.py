"""A Service in front of several operator replicas, for tests: a TCP forwarder.

What kube-proxy does for a ClusterIP Service, on loopback: each new connection goes to
the first backend that accepts it (a dead replica refuses, as an endpoint removed from
the Service would), the bytes pass through untouched (TLS ends at the replica), and the
client's source address is kept (kube-proxy only rewrites the destination), so the
evidence API's upload source check still sees the pod's address. Test infrastructure.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence


class ServiceForwarder:
    """Listens on 127.0.0.1:``port``; forwards each connection to a live backend port."""

    def __init__(self, backends: Sequence[int]) -> None:
        self.backends = list(backends)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="service", daemon=True)
        #: How many connections each backend port was given.
        self.routed: dict[int, int] = {}

    def start(self) -> ServiceForwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, (source, _) = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client, source), daemon=True).start()

    def _connect(self, source: str) -> socket.socket | None:
        for port in self.backends:
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", port), timeout=2, source_address=(source, 0)
                )
            except OSError:
                continue
            upstream.settimeout(None)
            self.routed[port] = self.routed.get(port, 0) + 1
            return upstream
        return None

    def _forward(self, client: socket.socket, source: str) -> None:
        upstream = self._connect(source)
        if upstream is None:
            client.close()
            return
        done = threading.Event()

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                done.set()

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)
        done.wait(timeout=600)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.close()
