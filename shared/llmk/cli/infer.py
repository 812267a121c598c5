"""`llmk classify` and `llmk generate`: through the inference service when LLMK_INFERENCE_ADDRESS is set,
else in this process (the model built from the store, served for this one command).

NAME@REF pins the answer to that version (an id, tag or branch); the service refuses with FAILED_PRECONDITION
when it serves another. The in-process model comes from the composition root (context.tiers()), so the
shared package never imports the inference tier.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Protocol

import typer

from llmk.cli.context import Json, split_ref, tiers
from llmk.cli.output import emit
from llmk.config import Settings
from llmk.errors import InvalidInput

Model = Annotated[str, typer.Option("--model", "-m", help="NAME or NAME@REF (version id, tag or branch)")]


def register(app: typer.Typer) -> None:
    app.command()(classify)
    app.command()(generate)


def classify(
    ctx: typer.Context,
    texts: Annotated[list[str], typer.Argument(help="Texts to classify")],
    model: Model,
    labels: Annotated[str, typer.Option(help="Comma-separated labels (default LLMK_DEFAULT_LABELS)")] = "",
    template: Annotated[
        str, typer.Option(help="Prompt template with {text} (default LLMK_CLASSIFY_TEMPLATE)")
    ] = "",
    json_: Json = False,
) -> None:
    """Score each text against the labels by their probability after the prompt."""
    name, ref = split_ref(model)
    wanted = [part.strip() for part in labels.split(",") if part.strip()]
    with _engine(ctx, name, ref) as engine:
        answer = engine.classify(texts, wanted, template)
    rows = [
        {"text": t[:60], "label": r["label"], **{k: round(v, 4) for k, v in r["probabilities"].items()}}
        for t, r in zip(texts, answer["results"], strict=True)
    ]
    emit(json_, {"model": name, **answer}, rows, title=f"{name} version {answer['version']}")


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
                emit(True, {"model": name, "text": "".join(pieces), **item})
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
