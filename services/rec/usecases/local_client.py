"""A recommender served in this process for one caller (a command): the version at `ref`, loaded once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.rec.interface import Recommendation
from services.rec.usecases import recommender

if TYPE_CHECKING:
    from services.store.interface import StoreClient


class LocalRecClient:
    def __init__(self, store: StoreClient, model: str, ref: str | None = None):
        self.store = store
        try:
            self.served = recommender.serve(store, model, ref)
        except Exception:
            store.close()
            raise

    def recommend(self, user: int, k: int = 10, exclude: frozenset[int] = frozenset()) -> Recommendation:
        return self.served.recommend(user, k, exclude)

    def close(self) -> None:
        self.store.close()
