"""The `llmk` command. Failures print one line and exit non-zero (code per error class).

The console script starts in services/compose.py, which passes the tiers to `run`. Command modules import
torch, grpc and the tiers inside the commands that use them: `llmk --help` loads none of them.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from pydantic import ValidationError

from llmk.cli import demo, feedback, health, infer, monitor, store, task, train
from llmk.cli.context import Tiers, tiers
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
demo.register(app)
health.register(app)
db = typer.Typer(help="Metadata database schema.", no_args_is_help=True)
app.add_typer(db, name="db")

TIERS = ("store", "inference", "optimizer")


@db.command()
def upgrade() -> None:
    """Apply Alembic migrations to LLMK_DATABASE_URL (SQLite under .llmk/ by default)."""
    from llmk.adapters.migrate import current
    from llmk.adapters.migrate import upgrade as run_upgrade
    from llmk.adapters.schema import make_engine

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    run_upgrade(engine)
    print(f"database at revision {current(engine)}")


@app.command()
def serve(
    ctx: typer.Context,
    tier: Annotated[str, typer.Argument(help="store, inference or optimizer")],
    listen: Annotated[str, typer.Option(help="host:port (default LLMK_LISTEN)")] = "",
) -> None:
    """Run one tier as a gRPC service (health and reflection included) until SIGTERM."""
    if tier not in TIERS:
        raise typer.BadParameter(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    settings = Settings()
    if listen:
        settings.listen = check_address(listen, "--listen", listening=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    tiers(ctx).serve(tier, settings)


def run(with_tiers: Tiers) -> None:
    try:
        app(obj=with_tiers)
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
