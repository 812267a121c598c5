"""Ports outside 1-65535 are refused wherever an address is read, instead of wrapping to another port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmk.config import Settings
from llmk.domain.addresses import check_address
from llmk.errors import InvalidInput


@pytest.mark.parametrize("address", ["127.0.0.1:115687", "127.0.0.1:65536", "[::1]:99999", "h:0"])
def test_a_port_out_of_range_is_refused(address: str) -> None:
    with pytest.raises(InvalidInput, match="65535"):
        check_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "[::1]:1", "localhost:65535", "unix:/tmp/s"])
def test_ports_in_range_and_other_targets_pass(address: str) -> None:
    assert check_address(address) == address


def test_listening_may_ask_for_any_free_port() -> None:
    assert check_address("127.0.0.1:0", listening=True) == "127.0.0.1:0"
    with pytest.raises(InvalidInput):
        check_address("127.0.0.1:70000", listening=True)


@pytest.mark.parametrize("field", ["store_address", "inference_address", "optimizer_address", "listen"])
def test_settings_refuse_a_port_out_of_range(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **{field: "127.0.0.1:115687"})  # type: ignore[call-arg]


ROOT = Path(__file__).resolve().parents[3]


def test_a_metrics_port_out_of_range_is_refused() -> None:
    with pytest.raises(ValidationError, match="metrics_port"):
        Settings(_env_file=None, metrics_port=70000)  # type: ignore[call-arg]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`llmk ARGS` from this checkout, with no LLMK_* setting but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    path = {"PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}", "LLMK_HOME": "/nonexistent/llmk-home"}
    code = "import sys; from llmk.cli.main import run; sys.argv = ['llmk', *sys.argv[1:]]; run()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **path, **env},
    )


def test_health_with_a_port_out_of_range_exits_with_invalid_input() -> None:
    done = run_cli("health", "127.0.0.1:115687", "--timeout", "0.5")
    assert done.returncode == InvalidInput.exit_code
    assert done.stderr.strip().splitlines() == [
        "llmk: error: address '127.0.0.1:115687': the port must be from 1 to 65535"
    ]


def test_serve_with_a_bad_listen_is_one_line() -> None:
    done = run_cli("serve", "store", "--listen", "127.0.0.1:99999")
    assert done.returncode == InvalidInput.exit_code
    assert "--listen '127.0.0.1:99999': the port must be from 0 to 65535" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_bad_setting_from_the_environment_is_one_line_naming_it() -> None:
    done = run_cli("store", "models", LLMK_STORE_ADDRESS="127.0.0.1:115687")
    assert done.returncode == InvalidInput.exit_code
    assert done.stderr.strip().splitlines() == [
        "llmk: error: LLMK_STORE_ADDRESS: address '127.0.0.1:115687': the port must be from 1 to 65535"
    ]
