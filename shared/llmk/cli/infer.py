"""`llmk classify` and `llmk generate`: through the inference service when LLMK_INFERENCE_ADDRESS is set,
else in this process (the model built from the store, served for this one command).

NAME@REF pins the answer to that version (an id, tag or branch); the service refuses with FAILED_PRECONDITION
when it serves another. The in-process model comes from the composition root (context.tiers()), so the
shared package never imports the inference tier.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
from rich.console import Console

from llmk.cli.context import Json, split_ref, tiers
from llmk.cli.output import emit
from llmk.config import Settings
from llmk.errors import InvalidInput, NotFound

Model = Annotated[str, typer.Option("--model", "-m", help="NAME or NAME@REF (version id, tag or branch)")]


def register(app: typer.Typer) -> None:
    app.command()(classify)
    app.command()(generate)


def classify(
    ctx: typer.Context,
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
    with _engine(ctx, name, ref) as engine:
        answers = _classify_all(engine, inputs, wanted, template, batch, quiet=json_)
        if explain:
            _add_explanations(engine, inputs, answers, wanted, template)
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
    engine: Engine, texts: list[str], labels: list[str], template: str, batch: int, quiet: bool
) -> list[dict[str, Any]]:
    from rich.progress import Progress

    out: list[dict[str, Any]] = []
    shown = not quiet and len(texts) > batch and sys.stderr.isatty()
    with Progress(console=Console(stderr=True), transient=True, disable=not shown) as progress:
        bar = progress.add_task("classifying", total=len(texts))
        for i in range(0, len(texts), batch):
            answer = engine.classify(texts[i : i + batch], labels, template)
            version = int(answer["version"])
            out += [{**r, "version": version} for r in answer["results"]]
            progress.advance(bar, len(answer["results"]))
    return out


def _add_explanations(
    engine: Engine, texts: list[str], answers: list[dict[str, Any]], labels: list[str], template: str
) -> None:
    from llmk.app.explain import explain

    def classify(chunk: Sequence[str]) -> dict[str, Any]:
        return engine.classify(list(chunk), labels, template)

    for text, answer in zip(texts, answers, strict=True):
        why = explain(classify, text)
        answer["top_tokens"] = why.top(5)


def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    model: Model,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate")] = 64,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling")] = None,
    chat: Annotated[bool, typer.Option("--chat/--raw", help="Apply the model's chat template")] = True,
    json_: Json = False,
) -> None:
    """Generate a completion; text is printed as it is produced (all at once with --json)."""
    name, ref = split_ref(model)
    request = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "chat": chat,
    }
    pieces: list[str] = []
    with _engine(ctx, name, ref) as engine:
        for item in engine.generate(request):
            if isinstance(item, str):
                pieces.append(item)
                if not json_:
                    print(item, end="", flush=True)
                continue
            if json_:
                emit(True, {"model": name, "text": "".join(pieces), **item, "version": int(item["version"])})
            else:
                print()
                print(
                    f"[{name} version {item['version']}: {item['prompt_tokens']} prompt + "
                    f"{item['completion_tokens']} completion tokens, {item['finish_reason']}]",
                    file=sys.stderr,
                )


class Engine(Protocol):
    """What classify and generate need: the service over gRPC, or the model served in this process."""

    def classify(self, texts: list[str], labels: list[str], template: str) -> dict[str, Any]: ...
    def generate(self, request: dict[str, Any]) -> Iterator[str | dict[str, Any]]: ...
    def close(self) -> None: ...


class _Remote:
    """The inference service over gRPC; its failures are re-raised as llmk errors."""

    def __init__(self, settings: Settings, name: str, ref: str | None):
        from llmk.rpc.security import Tls, open_channel
        from llmk.rpc.server import message_options
        from llmk.v1 import inference_pb2, inference_pb2_grpc

        self.pb, self.name, self.ref = inference_pb2, name, ref or ""
        options = message_options(settings.max_message_bytes)
        tls, token = Tls.of(settings), settings.auth_token
        self.channel = open_channel(settings.inference_address, options, tls, token)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)

    def classify(self, texts: list[str], labels: list[str], template: str) -> dict[str, Any]:
        request = self.pb.ClassifyRequest(
            model=self.name, version=self.ref, texts=texts, labels=labels, template=template
        )
        reply = self._call(lambda: self.stub.Classify(request))
        results = [
            {"label": r.label, "probabilities": dict(r.probabilities), "prompt_tokens": r.prompt_tokens}
            for r in reply.results
        ]
        return {"version": reply.version, "results": results}

    def generate(self, request: dict[str, Any]) -> Iterator[str | dict[str, Any]]:
        fields = {"model": self.name, "version": self.ref, "max_tokens": request["max_tokens"]}
        fields.update(temperature=request["temperature"], seed=request["seed"])
        if request["chat"]:
            fields["messages"] = [self.pb.ChatMessage(role="user", content=request["prompt"])]
        else:
            fields["prompt"] = request["prompt"]
        stream = self.stub.Generate(self.pb.GenerateRequest(**fields))
        with _translated():
            for chunk in stream:
                if chunk.text:
                    yield chunk.text
                if chunk.done:
                    yield {
                        "version": chunk.version,
                        "finish_reason": chunk.finish_reason,
                        "prompt_tokens": chunk.prompt_tokens,
                        "completion_tokens": chunk.completion_tokens,
                    }

    def _call(self, fn: Any) -> Any:
        with _translated():
            return fn()

    def close(self) -> None:
        self.channel.close()


@contextmanager
def _translated() -> Iterator[None]:
    import grpc

    from llmk.rpc.errors import from_rpc_error

    try:
        yield
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


@contextmanager
def _engine(ctx: typer.Context, name: str, ref: str | None) -> Iterator[Engine]:
    settings = Settings()
    if not name:
        raise InvalidInput("--model NAME[@REF] is required")
    engine: Engine = (
        _Remote(settings, name, ref)
        if settings.inference_address
        else tiers(ctx).local_inference(settings, name, ref)
    )
    try:
        yield engine
    finally:
        engine.close()
