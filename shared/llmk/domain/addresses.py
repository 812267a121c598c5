"""host:port addresses as the user writes them: a port outside 1-65535 is refused, never wrapped (gRPC
reads 115687 as 50151)."""

from __future__ import annotations

from llmk.errors import InvalidInput


def check_address(address: str, what: str = "address", listening: bool = False) -> str:
    """`address` unchanged when its port is in range (0 too when `listening`: any free port); InvalidInput
    naming `what` otherwise. Targets without a numeric port (unix:/path) are left to gRPC."""
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address
    low = 0 if listening else 1
    if not low <= int(port) <= 65535:
        raise InvalidInput(f"{what} {address!r}: the port must be from {low} to 65535")
    return address
