"""`llmk store ...`: the parameter store from the shell, embedded or through the service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmk.cli.context import Json, deployment, history, split_ref, store_session
from llmk.cli.output import emit, human_bytes, stage
from llmk.errors import InvalidInput

app = typer.Typer(
    help="Versioned model parameters: import, commit, export, diff, roll back, collect.", no_args_is_help=True
)


@app.command("import")
def import_(
    source: Annotated[
        str, typer.Argument(help="HF folder, .safetensors, .gguf, 'smollm2' or 'synthetic:PRESET'")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Name of the new model")],
    message: Annotated[str, typer.Option(help="Commit message")] = "",
    if_missing: Annotated[
        bool, typer.Option(help="Do nothing when the model exists (deployment jobs run on every start)")
    ] = False,
    task: Annotated[
        str, typer.Option(help="Packaged task the model serves (e.g. sentiment); see `llmk task`")
    ] = "",
    json_: Json = False,
) -> None:
    """Import a model as version 1 of a new store model (branch main)."""
    from llmk.domain.task_spec import TASK_KEY, encode_task, packaged
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.importers import load_source

    metadata: dict[str, object] = {TASK_KEY: encode_task(packaged(task))} if task else {}
    with store_session() as c:
        if if_missing and any(m.name == model for m in c.store.models()):
            emit(json_, {"model": model, "imported": False})
            return
        gguf = source == "smollm2" or source.endswith(".gguf")
        with stage(f"reading {source}" + (" (dequantizing GGUF: 10-20 s for SmolLM2)" if gguf else "")):
            imported = load_source(source, c.settings.max_header_bytes, c.settings.max_import_file_bytes)
        info = CommitInfo(
            message=message or f"import {imported.source}",
            metadata={"source": imported.source, **metadata},
        )
        size = human_bytes(sum(t.numel() * t.element_size() for t in imported.tensors.values()))
        with stage(f"storing {len(imported.tensors)} tensors ({size}) as version 1 of {model!r}"):
            v = c.store.create_model(model, imported.tensors, imported.config, imported.files, info)
    emit(
        json_,
        {
            "model": model,
            "version": v.id,
            "tensors": len(v.entries),
            "bytes": sum(e.nbytes for e in v.entries),
        },
    )


@app.command()
def commit(
    model: Annotated[str, typer.Argument(help="Model name")],
    from_: Annotated[Path, typer.Option("--from", help="safetensors file with complete new values")],
    branch: Annotated[str, typer.Option(help="Branch to move")] = "main",
    message: Annotated[str, typer.Option(help="Commit message")] = "",
    parent: Annotated[int | None, typer.Option(help="Head the change was computed against")] = None,
    json_: Json = False,
) -> None:
    """Commit new weights; the store keeps the cheapest exact encoding of what changed."""
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.objects import read_safetensors

    with store_session() as c:
        tensors = read_safetensors(from_, c.settings.max_header_bytes)
        with stage(f"comparing {len(tensors)} tensors with {model}@{branch} and committing what changed"):
            v = c.store.commit_full(model, tensors, branch, parent, CommitInfo(message=message))
    emit(
        json_,
        {
            "model": model,
            "version": v.id,
            "parent": v.parent,
            "entries": [{"name": e.name, "kind": e.kind, "nnz": e.nnz, "bytes": e.nbytes} for e in v.entries],
        },
        [{"tensor": e.name, "kind": e.kind, "nnz": e.nnz, "bytes": e.nbytes} for e in v.entries],
        title=f"{model} version {v.id}",
    )


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION, NAME@BRANCH or NAME@TAG")],
    out: Annotated[Path, typer.Option("--out", "-o", help="safetensors file to write")],
    prefix: Annotated[str, typer.Option(help="Only tensors under this dotted prefix or glob")] = "",
    json_: Json = False,
) -> None:
    """Write one version (or part of it) as a safetensors file."""
    model, version = split_ref(ref)
    with store_session() as c, stage(f"writing {model}@{version or 'main'} to {out}"):
        n = c.store.export(model, version, out, prefix)
    emit(json_, {"model": model, "ref": version or "main", "out": str(out), "tensors": n})


@app.command("log")
def log_(
    model: Annotated[str, typer.Argument(help="NAME or NAME@REF")],
    limit: Annotated[int, typer.Option(help="At most this many versions")] = 50,
    json_: Json = False,
) -> None:
    """History of a branch, newest first."""
    name, ref = split_ref(model)
    with history() as h:
        versions = h.log(name, ref, limit)
    emit(
        json_,
        versions,
        [
            {
                "version": v.id,
                "parent": v.parent,
                "time": v.created_at.strftime("%F %T"),
                "author": v.author,
                "message": v.message,
                "tensors": len(v.entries),
            }
            for v in versions
        ],
        title=f"{name}@{ref or 'main'}",
    )


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="NAME@A")],
    b: Annotated[str, typer.Argument(help="NAME@B")],
    json_: Json = False,
) -> None:
    """Which tensors differ between two versions: delta type, changed values, norm of the change."""
    (model, ra), (model_b, rb) = split_ref(a), split_ref(b)
    if model != model_b:
        raise InvalidInput(f"both sides must name the same model ({model} vs {model_b})")
    with store_session() as c:
        changes = c.store.diff(model, ra or "main", rb or "main")
    emit(json_, changes, title=f"{a} .. {b}")


@app.command()
def stats(model: Annotated[str, typer.Argument(help="Model name")], json_: Json = False) -> None:
    """Bytes stored per version and in total, next to what full copies would cost."""
    with store_session() as c:
        rows = c.store.stats(model)
    stored, full = sum(r.stored_bytes for r in rows), sum(r.full_bytes for r in rows)
    data = {
        "model": model,
        "versions": rows,
        "stored_bytes": stored,
        "full_copy_bytes": full,
        "ratio": stored / full if full else 0.0,
    }
    emit(
        json_,
        data,
        [
            {
                "version": r.version,
                "stored": human_bytes(r.stored_bytes),
                "full copy": human_bytes(r.full_bytes),
            }
            for r in rows
        ]
        + [{"version": "total", "stored": human_bytes(stored), "full copy": human_bytes(full)}],
        title=model,
    )


@app.command()
def freeze(
    model: Annotated[str, typer.Argument(help="Model name")],
    patterns: Annotated[list[str], typer.Argument(help="Dotted prefixes or globs to make read-only")],
    json_: Json = False,
) -> None:
    """Make parameters read-only: later commits and rollbacks changing them are rejected whole."""
    with store_session() as c:
        m = c.store.freeze(model, patterns)
    emit(json_, {"model": model, "frozen": m.frozen})


@app.command()
def unfreeze(
    model: Annotated[str, typer.Argument(help="Model name")],
    patterns: Annotated[list[str], typer.Argument(help="Freeze patterns to remove, as given to freeze")],
    json_: Json = False,
) -> None:
    """Make frozen parameters writable again."""
    with history() as h:
        m = h.unfreeze(model, patterns)
    emit(json_, {"model": model, "frozen": m.frozen})


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Model name")],
    to: Annotated[str, typer.Option("--to", help="Version, tag or branch to restore")],
    branch: Annotated[str, typer.Option(help="Branch to move")] = "main",
    force_frozen: Annotated[
        bool, typer.Option(help="Also restore frozen tensors (else a rollback changing one is refused)")
    ] = False,
    json_: Json = False,
) -> None:
    """Point a branch at an earlier version's values as a new history entry; nothing is deleted."""
    with store_session() as c:
        v = c.store.rollback(model, to, branch, force_frozen=force_frozen)
    emit(json_, {"model": model, "branch": branch, "version": v.id, "restores": v.basis})


@app.command()
def squash(ref: Annotated[str, typer.Argument(help="NAME@REF")], json_: Json = False) -> None:
    """Write a new base version holding every tensor in full, bit-identical to REF."""
    model, version = split_ref(ref)
    with store_session() as c:
        v = c.store.squash(model, version)
    emit(json_, {"model": model, "version": v.id, "squashed": v.parent, "tensors": len(v.entries)})


@app.command()
def branch(
    model: Annotated[str, typer.Argument(help="Model name")],
    name: Annotated[str, typer.Argument(help="New branch name")],
    from_: Annotated[str, typer.Option("--from", help="Version, tag or branch to start from")] = "main",
    json_: Json = False,
) -> None:
    """Create a branch."""
    with history() as h:
        r = h.branch(model, name, from_)
    emit(json_, r)


@app.command()
def tag(
    model: Annotated[str, typer.Argument(help="Model name")],
    name: Annotated[str, typer.Argument(help="Tag name")],
    ref: Annotated[str, typer.Option("--ref", help="Version or branch to pin")] = "main",
    json_: Json = False,
) -> None:
    """Pin a version under a name."""
    with history() as h:
        r = h.tag(model, name, ref)
    emit(json_, r)


@app.command()
def models(json_: Json = False) -> None:
    """List models with their branches and tags."""
    with history() as h:
        rows = [
            {"model": m.name, "refs": {r.name: r.version for r in h.refs(m.name)}, "frozen": m.frozen}
            for m in h.models()
        ]
    emit(json_, rows)


@app.command()
def scrub(json_: Json = False) -> None:
    """Re-hash every object file under LLMK_OBJECT_DIR; quarantine damaged ones and exit 7 if any."""
    from llmk.errors import Corrupt

    damaged = deployment().local_store().scrub()
    emit(json_, {"damaged": damaged, "count": len(damaged)})
    if damaged:
        shown = ", ".join(d[:12] for d in damaged)
        raise Corrupt(f"{len(damaged)} damaged object(s) moved to quarantine/: {shown}")


@app.command("migrate-objects")
def migrate_objects(
    to: Annotated[str, typer.Option("--to", help="s3://bucket/prefix or a folder to copy the objects to")],
    json_: Json = False,
) -> None:
    """Copy every referenced object to another object store (resumable, verified); then set
    LLMK_OBJECTS_URL to it."""
    from llmk.config import Settings
    from services.store.usecases.object_migration import migrate

    settings = Settings()
    store = deployment(settings).local_store()
    target = deployment(settings.model_copy(update={"objects_url": to})).objects()
    done = migrate(store.catalog, store.objects, target)
    emit(json_, {"copied": done.copied, "skipped": done.skipped, "bytes": done.bytes_copied, "to": to})


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed")] = False,
    json_: Json = False,
) -> None:
    """Remove object files no version references (after the grace period)."""
    with store_session() as c:
        removed = c.store.gc(dry_run)
    emit(json_, {"removed": removed, "count": len(removed), "dry_run": dry_run})
