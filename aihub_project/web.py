"""`python -m aihub_project.web …`: daphne, with TCP_NODELAY on every connection.

Tokens leave as many small writes. With Nagle's algorithm on, a small write
waits for the ACK of the previous one, and the client delays that ACK (up to
~40 ms on Linux): the first token over SSE arrived tens of milliseconds late.
Daphne has no option for it, so the HTTP factory (which also carries the
websocket upgrade) sets it on each new connection. Arguments are daphne's.
"""
import os

# The web process borrows database connections from a pool (settings.py says why).
os.environ.setdefault("DATABASE_POOL", "true")

from daphne import http_protocol  # noqa: E402
from daphne.cli import CommandLineInterface  # noqa: E402

_build_protocol = http_protocol.HTTPFactory.buildProtocol


def _build_protocol_without_nagle(self, addr):
    protocol = _build_protocol(self, addr)
    if protocol is None:
        return None
    connection_made = protocol.connectionMade

    def connectionMade():
        connection_made()
        protocol.transport.setTcpNoDelay(True)

    protocol.connectionMade = connectionMade
    return protocol


http_protocol.HTTPFactory.buildProtocol = _build_protocol_without_nagle

if __name__ == "__main__":
    CommandLineInterface.entrypoint()
