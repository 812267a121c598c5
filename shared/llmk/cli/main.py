"""The `llmk` command. Failures print one line and exit non-zero (code per error class).

Every command reaches the tiers through llmk.bootstrap. Command modules import torch, grpc and the tiers
inside the commands that use them: `llmk --help` loads none of them.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from llmk.cli import (
    demo,
    demo_rec,
    demo_support,
    evaluate,
    feedback,
    health,
    infer,
    monitor,
    rec,
    store,
    task,
    train,
)
from llmk.cli.context import deployment
from llmk.config import Settings
from llmk.domain.addresses import check_address
from llmk.errors import InvalidInput, LlmkError

app = typer.Typer(
    help="llmk: versioned LLM parameters, inference workers and an online optimizer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(store.app, name="store")
app.add_typer(task.app, name="task")
train.register(app)
infer.register(app)
monitor.register(app)
feedback.register(app)
demo_rec.register(demo.app)
demo_support.register(demo.app)
app.add_typer(demo.app, name="demo")
health.register(app)
db = typer.Typer(help="Metadata database schema.", no_args_is_help=True)
app.add_typer(db, name="db")
app.add_typer(evaluate.evaluate, name="evaluate")
app.add_typer(rec.app, name="rec")

TIERS = ("store", "inference", "optimizer", "api", "rec")


@db.command()
def upgrade() -> None:
    """Apply Alembic migrations to LLMK_DATABASE_URL (SQLite under .llmk/ by default)."""
    from llmk.platform.database import make_engine
    from llmk.platform.migrate import current
    from llmk.platform.migrate import upgrade as run_upgrade

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    run_upgrade(engine)
    print(f"database at revision {current(engine)}")


@app.command()
def serve(
    tier: Annotated[str, typer.Argument(help="store, inference, optimizer, rec, or api (the gateway)")],
    listen: Annotated[str, typer.Option(help="host:port (default LLMK_LISTEN)")] = "",
    model: Annotated[str, typer.Option(help="NAME[@REF] to serve (default LLMK_SERVE_MODEL)")] = "",
    host: Annotated[str, typer.Option(help="api: the address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="api: the port to listen on")] = 8000,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="inference, rec: also consume the tier's Celery queue (default LLMK_INFERENCE_WORKER, "
            "LLMK_REC_WORKER)",
        ),
    ] = None,
    queue_only: Annotated[
        bool, typer.Option(help="optimizer: run only a job worker on the optimizer queue, no gRPC")
    ] = False,
) -> None:
    """Run one tier as a gRPC service (health and reflection included; `rec` serves --model's
    recommendations), or `api`, the OpenAI-compatible HTTP gateway and chat page, until SIGTERM."""
    if tier not in TIERS:
        raise typer.BadParameter(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    settings = Settings()
    if tier == "api" and not listen:
        listen = f"{host}:{port}"
    if listen:
        settings.listen = check_address(listen, "--listen", listening=True)
    if model:
        settings.serve_model = model
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    deployment(settings).serve(tier, worker, queue_only)


def run() -> None:
    """The `llmk` console script."""
    try:
        app()
    except LlmkError as e:
        print(f"llmk: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except ValidationError as e:  # a bad LLMK_* value: name the setting, never a pydantic report
        print(f"llmk: error: {setting_error(e)}", file=sys.stderr)
        sys.exit(InvalidInput.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def setting_error(e: ValidationError) -> str:
    first = e.errors()[0]
    name = "LLMK_" + "_".join(str(part) for part in first["loc"]).upper()
    return f"{name}: {first['msg'].removeprefix('Value error, ')}"


if __name__ == "__main__":
    run()
