"""Per-ticker moods over a sliding window: an alert opens when a ticker's negative (or positive) share
reaches the threshold with enough mentions, names the items behind it, and clears when the mood recovers."""

from __future__ import annotations

from services.monitor.usecases.alerts import AlertRules, Moods, Scored, tickers_in


def scored(n: int, label: str, tickers: tuple[str, ...] = ("ACME",), p: float = 0.9) -> Scored:
    return Scored(f"i{n}", f"text {n}", label, p, tickers, 1)


def test_tickers_come_from_cashtags_and_the_company_map() -> None:
    text = "$aapl and $BRK.B up; Microsoft flat; microsoftish is not a company; $ACME $ACME"
    assert tickers_in(text, {"Microsoft": "MSFT"}) == ["AAPL", "BRK.B", "ACME", "MSFT"]


def test_an_alert_opens_at_the_threshold_with_enough_mentions_and_clears_on_recovery() -> None:
    moods = Moods(AlertRules(window=10, threshold=0.6, min_mentions=3, hysteresis=0.1))
    assert moods.add(scored(0, "negative")) == []
    assert moods.add(scored(1, "negative")) == []  # 2 mentions: below min_mentions
    opened = moods.add(scored(2, "negative", p=0.99))
    assert [(c.ticker, c.direction, c.cleared, c.mentions) for c in opened] == [
        ("ACME", "negative", False, 3)
    ]
    assert [i.item_id for i in opened[0].items] == ["i2", "i0", "i1"]  # most confident first
    assert moods.add(scored(3, "neutral")) == []  # 3/4 = 0.75: still negative
    assert moods.add(scored(4, "positive")) == []  # 3/5 = 0.6: within the hysteresis band
    assert moods.add(scored(5, "positive")) == []  # 3/6 = 0.5: not yet below 0.6 - 0.1
    cleared = moods.add(scored(6, "positive"))  # 3/7
    assert [(c.direction, c.cleared) for c in cleared] == [("negative", True)]
    assert cleared[0].reason == "share 0.43 fell below 0.50 (threshold 0.60 minus hysteresis 0.10)"


def test_items_leaving_the_window_clear_an_alert_and_other_tickers_are_unaffected() -> None:
    moods = Moods(AlertRules(window=3, threshold=0.6, min_mentions=2))
    moods.add(scored(0, "positive", ("XYZ",)))
    opened = moods.add(scored(1, "positive", ("XYZ",)))
    assert [(c.ticker, c.direction) for c in opened] == [("XYZ", "positive")]
    assert moods.add(scored(2, "negative", ("OTHER",))) == []
    changes = moods.add(scored(3, "negative", ("OTHER",)))  # XYZ's first item leaves: 1 mention left
    assert [(c.ticker, c.direction, c.cleared) for c in changes] == [
        ("OTHER", "negative", False),
        ("XYZ", "positive", True),
    ]
    assert changes[1].reason == "too few mentions: 1 in the window, fewer than --min-mentions 2"
