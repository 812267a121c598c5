"""A port is served by one server: a second one started on it fails with a clear error instead of sharing
the port with the first (gRPC's SO_REUSEPORT would let the kernel split connections between the two)."""

from __future__ import annotations

import pytest

from llmk.errors import Unavailable
from llmk.platform.grpc_server import make_server


def test_a_second_server_on_a_taken_port_refuses_to_start() -> None:
    first, port = make_server([], ["first"], "127.0.0.1:0")
    first.start()
    try:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
            make_server([], ["second"], f"127.0.0.1:{port}")
    finally:
        first.stop(None)
