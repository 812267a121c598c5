"""A refused feedback file changes nothing: the standing job keeps its accepted examples and takes the next
file, and the command line checks a whole file before it creates or feeds any job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jobs_support import TASK, examples

from llmk.errors import InvalidInput
from services.optimizer.interface import Example, JobSpec
from services.optimizer.main import Runtime

ROOT = Path(__file__).resolve().parents[3]


def test_a_bad_label_is_refused_and_the_standing_job_goes_on(runtime: Runtime, model: str) -> None:
    job_id = runtime.jobs.create_job(JobSpec(model=model, task=TASK, batch_size=64)).id
    runtime.jobs.submit_feedback(job_id, examples(20), "first")
    with pytest.raises(InvalidInput, match="label 'maybe'"):
        runtime.jobs.submit_feedback(job_id, [*examples(3), Example(text="fine", label="maybe")], "bad")
    job = runtime.jobs.get_job(job_id)
    assert (job.done, job.items, job.error) == (False, 20, "")
    assert not runtime.jobs.submit_feedback(job_id, examples(5, 20), "next").duplicate
    assert runtime.jobs.get_job(job_id).items == 25


def llmk(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    env.update(PYTHONPATH=f"{ROOT / 'shared'}:{ROOT}", LLMK_HOME=str(home), HF_HUB_OFFLINE="1")
    code = "import sys; from llmk.cli.main import run; sys.argv = ['llmk', *sys.argv[1:]]; run()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_a_file_with_one_bad_label_creates_and_feeds_no_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    imported = llmk(home, "store", "import", "synthetic:llama-tiny", "-m", "m", "--task", "sentiment")
    assert imported.returncode == 0, imported.stderr
    rows = [f"headline {i},{['positive', 'negative', 'neutral'][i % 3]}" for i in range(30)]
    (tmp_path / "bad.csv").write_text("\n".join(["text,label", *rows, "one more,sideways"]) + "\n")
    done = llmk(home, "feedback", "add", "-m", "m", "--file", str(tmp_path / "bad.csv"), "--holdout", "4")
    assert done.returncode == InvalidInput.exit_code
    assert done.stderr.strip().splitlines() == [
        "llmk: error: example 30 has label 'sideways', which is not in the task's label set "
        "['negative', 'positive', 'neutral']"
    ]
    jobs = llmk(home, "jobs", "--json")
    assert jobs.returncode == 0, jobs.stderr
    assert json.loads(jobs.stdout) == []
    negative = llmk(
        home, "feedback", "add", "-m", "m", "--file", str(tmp_path / "bad.csv"), "--holdout", "-1"
    )
    assert negative.returncode == InvalidInput.exit_code
    assert "--holdout" in negative.stderr


def test_job_ids_keys_and_limits_are_checked_before_the_database(runtime: Runtime, model: str) -> None:
    job_id = runtime.jobs.create_job(JobSpec(model=model, task=TASK, batch_size=64)).id
    refused = {
        "NUL in a job id": lambda: runtime.jobs.get_job("ab\x00cd"),
        "NUL in a key": lambda: runtime.jobs.submit_feedback(job_id, examples(2), "k\x00"),
        "a key over 200 characters": lambda: runtime.jobs.submit_feedback(job_id, examples(2), "k" * 201),
        "a job key over 200 characters": lambda: runtime.jobs.create_job(
            JobSpec(model=model, task=TASK), idempotency_key="k" * 201
        ),
        "a negative limit": lambda: runtime.jobs.list_jobs(limit=-1),
        "NUL in a model filter": lambda: runtime.jobs.list_jobs("ti\x00ny"),
    }
    for label, call in refused.items():
        with pytest.raises(InvalidInput) as error:
            call()
        assert "SQL" not in str(error.value), label
    job = runtime.jobs.get_job(job_id)
    assert (job.done, job.items) == (False, 0)


def test_a_new_job_takes_the_recipe_options_and_refuses_bad_ones(tmp_path: Path) -> None:
    home = tmp_path / "home"
    imported = llmk(home, "store", "import", "synthetic:llama-tiny", "-m", "m", "--task", "sentiment")
    assert imported.returncode == 0, imported.stderr
    rows = [f"headline {i},{['positive', 'negative', 'neutral'][i % 3]}" for i in range(24)]
    (tmp_path / "good.csv").write_text("\n".join(["text,label", *rows]) + "\n")
    add = ("feedback", "add", "-m", "m", "--file", str(tmp_path / "good.csv"), "--holdout", "4")
    refused = llmk(home, *add, "--replay", "-1")
    assert refused.returncode == InvalidInput.exit_code
    assert refused.stderr.strip().splitlines() == ["llmk: error: replay must be an integer >= 0, got -1"]
    assert json.loads(llmk(home, "jobs", "--json").stdout) == []

    done = llmk(home, *add, "--batch-size", "4", "--rank", "2", "--local-steps", "--replay", "3")
    assert done.returncode == 0, done.stderr
    [job] = json.loads(llmk(home, "jobs", "--json").stdout)
    assert (job["spec"]["rank"], job["spec"]["local_steps"], job["spec"]["replay"]) == (2, True, 3)
