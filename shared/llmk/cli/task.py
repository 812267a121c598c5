"""`llmk task show|set`: the classification task a model serves, versioned with the model."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

import typer

from llmk.cli.context import Json, history, split_ref, store_session
from llmk.cli.output import emit

app = typer.Typer(
    help="The task a model serves (labels, prompt template): classify, train and monitor use it.",
    no_args_is_help=True,
)


@app.command()
def show(
    model: Annotated[str, typer.Argument(help="NAME or NAME@REF")],
    json_: Json = False,
) -> None:
    """Print the task in force at a version (the one set by it or its nearest ancestor)."""
    from llmk.domain.task_spec import encode_task, require_task, training_note

    name, ref = split_ref(model)
    with history() as h:
        task = require_task(h, name, ref)
        training = training_note(h, name, ref)
    fields = {"model": name, **encode_task(task), "training": training}
    emit(json_, fields, [{"field": k, "value": repr(v) if k == "template" else v} for k, v in fields.items()])


@app.command("set")
def set_(
    model: Annotated[str, typer.Argument(help="Model name")],
    labels: Annotated[str, typer.Option(help="Comma-separated labels, in order")] = "",
    template: Annotated[str, typer.Option(help="Prompt template containing {text}")] = "",
    max_tokens: Annotated[int, typer.Option(help="Tokens of a text that count; the rest is cut")] = 0,
    packaged: Annotated[str, typer.Option(help="Start from a packaged task, e.g. sentiment")] = "",
    branch: Annotated[str, typer.Option(help="Branch that gets the new version")] = "main",
    json_: Json = False,
) -> None:
    """Commit a version that sets the task (no tensor changes); workers following the branch serve it."""
    from llmk.domain.task_spec import TaskSpec, encode_task, set_task, task_of
    from llmk.domain.task_spec import packaged as packaged_task
    from llmk.errors import InvalidInput

    with store_session() as c:
        base = packaged_task(packaged) if packaged else task_of(c.store, model, branch)
        chosen = tuple(x.strip() for x in labels.split(",") if x.strip())
        if base is None and not (chosen and template):
            raise InvalidInput(f"{model} has no task yet: give both --labels and --template")
        changes: dict[str, Any] = {"labels": chosen, "template": template, "max_tokens": max_tokens}
        task = replace(
            base or TaskSpec(labels=chosen, template=template), **{k: v for k, v in changes.items() if v}
        )
        v = set_task(c.store, model, task, branch, author="llmk task set")
    emit(json_, {"model": model, "version": v.id, **encode_task(task)})
