"""`llmk evaluate replies`: how well a served version answers held-out customer messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from llmk.cli.context import Json, deployment, split_ref
from llmk.cli.output import emit
from llmk.errors import NotFound

evaluate = typer.Typer(help="Measure a served version on held-out data.", no_args_is_help=True)


@evaluate.command()
def replies(
    model: Annotated[str, typer.Option("--model", "-m", help="NAME or NAME@REF")],
    file: Annotated[Path, typer.Option("--file", help="CSV with instruction and response columns")],
    generate: Annotated[
        int, typer.Option(help="Greedy replies for ROUGE-L on the first N rows (0: skip)")
    ] = 0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest greedy reply")] = 128,
    json_: Json = False,
) -> None:
    """Mean per-token NLL of each reference reply given its message as a chat turn, and ROUGE-L of the
    version's own greedy replies on the first --generate rows: one version answers both."""
    from services.support.adapters.scoring import StoredReplyScorer
    from services.support.usecases.evaluation import evaluate_replies, parse_pairs

    name, ref = split_ref(model)
    if not file.is_file():
        raise NotFound(f"no such file: {file}")
    pairs = parse_pairs(file.read_text(encoding="utf-8", errors="replace"))
    tiers = deployment()
    store = tiers.store()
    try:
        scorer = StoredReplyScorer(store, name, ref)
    finally:
        store.close()
    inference = tiers.inference(name, str(scorer.version))
    try:
        score = evaluate_replies(scorer, inference, pairs, generate, max_tokens)
    finally:
        inference.close()
    data = {"model": name, **dataclasses.asdict(score)}
    emit(json_, data, title=f"{name} version {score.version}")
