"""Every `llmk ...` command the README shows exists and parses as typed: a code block's command line
must parse whole (subcommands, options, arguments); an inline one in prose must name a real subcommand
and real options (it is parsed with --help, as it often leaves out required options)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from llmk.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"
ENV_PREFIX = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")


def readme_commands(text: str) -> list[str]:
    """Command lines that run llmk: code-block lines (continuations joined) and inline `llmk ...` spans."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    # inline spans name a command in prose, often without its required options: checked with --help
    lines += [f"{span} --help" for span in re.findall(r"`(llmk [^`]+)`", text)]
    found = []
    for line in lines:
        line = re.sub(r"\s#.*$", "", line).strip().rstrip("&").strip()
        line = ENV_PREFIX.sub("", line)
        if line.startswith("llmk "):
            found.append(line)
    return list(dict.fromkeys(found))


class Unparsed(Exception):
    """A README command that llmk would refuse as typed."""


def parse(line: str) -> None:
    """Walk the subcommands, then let Click parse the rest; Unparsed says why it cannot."""
    args = shlex.split(line)[1:]
    command = typer.main.get_command(app)
    path = ["llmk"]
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        sub = command.get_command(typer.Context(command), args[0])
        if sub is None:
            raise Unparsed(f"no command {' '.join([*path, args[0]])!r}")
        path.append(args.pop(0))
        command = sub
    try:
        with command.make_context(" ".join(path), args):
            pass
    except typer.Exit as e:  # --help: parsed, printed, done
        if e.exit_code:
            raise Unparsed(f"{line}: exit {e.exit_code}") from None
    except Exception as e:  # Click's usage errors (typer vendors Click: its classes are private)
        raise Unparsed(f"{line}: {e}") from None


def test_the_readme_shows_commands() -> None:
    commands = readme_commands(README.read_text())
    assert "llmk serve inference --worker --help" in commands
    assert len(commands) > 30


@pytest.mark.parametrize("line", readme_commands(README.read_text()))
def test_every_readme_command_parses(line: str) -> None:
    parse(line)


def test_a_command_that_does_not_exist_is_caught() -> None:
    with pytest.raises(Unparsed):
        parse("llmk serve inference --workers 2")
    with pytest.raises(Unparsed):
        parse("llmk store nosuchcommand smol")
