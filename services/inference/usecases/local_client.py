"""The InferenceClient (services.inference.interface) in this process: a Host serving one model for one
caller (the CLI's embedded mode), answering the same records as rpc.client.GrpcInferenceClient."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llmk.config import Settings
from services.inference.engine.generator import Request
from services.inference.interface import Classification, Finished, GenerateRequest, LabelScores
from services.inference.usecases.host import Host
from services.store.interface import StoreClient


class LocalInferenceClient:
    """`model` at `ref` (default: its main branch), built from `store` (closed with this client)."""

    def __init__(
        self, settings: Settings, store: StoreClient, model: str, ref: str | None = None, events: Any = None
    ):
        """With `events` (a server such as the support API): the settings' sequences, following the branch;
        without, one sequence and no following, as a command serves itself."""
        self.model, self.ref = model, ref or ""
        self.store = store
        if events is not None:
            self.host = Host(settings, self.store, events)
        else:
            one_caller = settings.model_copy(update={"max_sequences": 1, "version_poll_seconds": 0.0})
            self.host = Host(one_caller, self.store)
        try:
            self.host.load(model, ref)
        except BaseException:
            self.close()
            raise

    def classify(
        self, texts: Sequence[str], labels: Sequence[str] = (), template: str = ""
    ) -> Classification:
        answer = self.host.classify(texts, labels, template, self.model, self.ref)
        results = [LabelScores(s.label, s.probabilities, s.prompt_tokens) for s in answer.results]
        return Classification(answer.version, results)

    def generate(self, request: GenerateRequest) -> Iterator[str | Finished]:
        r = request
        wanted = Request(
            r.prompt,
            messages=[{"role": role, "content": text} for role, text in r.messages] or None,
            chat=r.chat,
            max_tokens=r.max_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=r.seed,
            stop=r.stop,
        )
        generation = self.host.generate(wanted, self.model, r.pin or self.ref)
        done = False
        try:
            for item in generation:
                if isinstance(item, str):
                    yield item
                else:
                    done = True
                    end = item
                    yield Finished(end.version, end.finish_reason, end.prompt_tokens, end.completion_tokens)
        finally:
            if not done:  # the caller stopped reading (a client went away): free the sequence's slot
                generation.cancel()

    def version(self) -> int:
        return self.host.info().version

    def close(self) -> None:
        self.host.close()
        self.store.close()
