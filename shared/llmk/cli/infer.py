"""`llmk classify` and `llmk generate`: through the inference service when LLMK_INFERENCE_ADDRESS is set,
else in this process (the model built from the store, served for this one command).

NAME@REF pins the answer to that version (an id, tag or branch); the service refuses with FAILED_PRECONDITION
when it serves another. The client comes from the composition root's factory (context.tiers()), so the
shared package never imports the inference tier.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from llmk.cli.context import Json, deployment, split_ref
from llmk.cli.output import emit
from llmk.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from services.inference.interface import InferenceClient

Model = Annotated[str, typer.Option("--model", "-m", help="NAME or NAME@REF (version id, tag or branch)")]


def register(app: typer.Typer) -> None:
    app.command()(classify)
    app.command()(generate)


def classify(
    model: Model,
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Texts; '-' reads standard input (put -- before a text starting with '-')"),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="One text per line, or JSON lines with a text field")
    ] = None,
    labels: Annotated[str, typer.Option(help="Comma-separated labels (default: the model's task)")] = "",
    template: Annotated[
        str, typer.Option(help="Prompt template with {text} (default: the model's task)")
    ] = "",
    explain: Annotated[bool, typer.Option("--explain", help="Also the words that drove each label")] = False,
    batch: Annotated[int, typer.Option(help="Texts per request")] = 32,
    json_: Json = False,
) -> None:
    """Score each text against the labels by their probability after the prompt (the model's task by default).

    --explain adds occlusion attributions: how much the label's probability drops without each word."""
    name, ref = split_ref(model)
    inputs = read_texts(texts or [], file)
    if not 1 <= batch <= 64:
        raise InvalidInput(f"--batch must be between 1 and 64, got {batch}")
    wanted = [part.strip() for part in labels.split(",") if part.strip()]
    with _inference(name, ref) as inference:
        answers = _classify_all(inference, inputs, wanted, template, batch, quiet=json_)
        if explain:
            _add_explanations(inference, inputs, answers, wanted, template)
    versions = sorted({a["version"] for a in answers})
    rows = [
        {"text": t[:60], "label": a["label"], **{k: round(v, 4) for k, v in a["probabilities"].items()}}
        | ({"words": ", ".join(w for w, _ in a["top_tokens"][:3])} if explain else {})
        for t, a in zip(inputs, answers, strict=True)
    ]
    data = {"model": name, "version": versions[-1], "versions": versions, "results": answers}
    emit(json_, data, rows, title=f"{name} version {', '.join(map(str, versions))}")


def read_texts(texts: list[str], file: Path | None) -> list[str]:
    """Texts from the arguments, '-' (standard input) and --file: one per line, or JSON lines with `text`."""
    lines: list[str] = []
    for text in texts:
        lines += sys.stdin.read().splitlines() if text == "-" else [text]
    if file is not None:
        if not file.is_file():
            raise NotFound(f"no such file: {file}")
        lines += file.read_text(encoding="utf-8", errors="replace").splitlines()
    out = [_text_of(line, n) for n, line in enumerate(lines, 1) if line.strip()]
    if not out:
        raise InvalidInput("no texts: give them as arguments, with --file, or on standard input ('-')")
    return out


def _text_of(line: str, n: int) -> str:
    if not line.lstrip().startswith("{"):
        return line
    try:
        text = json.loads(line).get("text")
    except (ValueError, AttributeError):
        raise InvalidInput(f"line {n}: starts like JSON but is not a JSON object") from None
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"line {n}: a JSON line needs a non-empty text field")
    return text


def _classify_all(
    inference: InferenceClient, texts: list[str], labels: list[str], template: str, batch: int, quiet: bool
) -> list[dict[str, Any]]:
    from rich.progress import Progress

    out: list[dict[str, Any]] = []
    shown = not quiet and len(texts) > batch and sys.stderr.isatty()
    with Progress(console=Console(stderr=True), transient=True, disable=not shown) as progress:
        bar = progress.add_task("classifying", total=len(texts))
        for i in range(0, len(texts), batch):
            answer = inference.classify(texts[i : i + batch], labels, template).encode()
            out += [{**r, "version": answer["version"]} for r in answer["results"]]
            progress.advance(bar, len(answer["results"]))
    return out


def _add_explanations(
    inference: InferenceClient,
    texts: list[str],
    answers: list[dict[str, Any]],
    labels: list[str],
    template: str,
) -> None:
    from services.monitor.usecases.explain import explain

    def classify(chunk: Sequence[str]) -> dict[str, Any]:
        return inference.classify(chunk, labels, template).encode()

    for text, answer in zip(texts, answers, strict=True):
        why = explain(classify, text)
        answer["top_tokens"] = why.top(5)


def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    model: Model,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling")] = None,
    chat: Annotated[bool, typer.Option("--chat/--raw", help="Apply the model's chat template")] = True,
    json_: Json = False,
) -> None:
    """Generate a completion; text is printed as it is produced (all at once with --json)."""
    from services.inference.interface import GenerateRequest

    name, ref = split_ref(model)
    request = GenerateRequest(prompt, max_tokens, temperature, seed, chat)
    pieces: list[str] = []
    with _inference(name, ref) as inference:
        for item in inference.generate(request):
            if isinstance(item, str):
                pieces.append(item)
                if not json_:
                    print(item, end="", flush=True)
            elif json_:
                emit(True, {"model": name, "text": "".join(pieces), **dataclasses.asdict(item)})
            else:
                print()
                print(
                    f"[{name} version {item.version}: {item.prompt_tokens} prompt + "
                    f"{item.completion_tokens} completion tokens, {item.finish_reason}]",
                    file=sys.stderr,
                )


@contextmanager
def _inference(name: str, ref: str | None) -> Iterator[InferenceClient]:
    if not name:
        raise InvalidInput("--model NAME[@REF] is required")
    inference = deployment().inference(name, ref)
    try:
        yield inference
    finally:
        inference.close()
