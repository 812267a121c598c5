"""The chat page in a real browser (Debian's chromium, driven by Playwright): a customer types a message,
sees the reply stream in with the version that wrote it, clicks a thumb, and the feedback is stored.

Without chromium the test fails in CI (CI is set) and is skipped elsewhere with how to install it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e.support.conftest import Api

if TYPE_CHECKING:
    from playwright.sync_api import Browser


# calls llmkSawReply with the reply's text each time the page changes it
WATCH_REPLIES = """() => new MutationObserver((changes) => changes.forEach((c) => {
  const node = c.target.nodeType === Node.TEXT_NODE ? c.target.parentElement : c.target;
  const reply = node.closest('[data-testid=reply]');
  if (reply) window.llmkSawReply(reply.textContent);
})).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true})"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        message = "chromium is not installed: apt-get install -y chromium (Debian), then rerun"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"], headless=True)
        yield launched
        launched.close()


def test_a_customer_chats_and_gives_a_thumb(browser: Browser, api: Api, tmp_path: Path) -> None:
    page = browser.new_page()
    pieces: list[str] = []  # the reply's text each time it changed: more than one means it streamed
    page.expose_function("llmkSawReply", lambda text: pieces.append(text))
    page.goto(api.url + "/")
    page.evaluate(WATCH_REPLIES)
    page.get_by_test_id("message-input").fill("My parcel never arrived, what can I do?")
    page.get_by_test_id("send").click()
    up = page.get_by_test_id("thumb-up")
    up.wait_for(state="visible")
    page.wait_for_function("!document.querySelector('[data-testid=thumb-up]').disabled", timeout=30_000)
    reply = page.get_by_test_id("reply").inner_text()
    assert reply
    assert len(set(pieces)) > 1  # the text grew piece by piece
    assert page.get_by_test_id("version").inner_text() == str(api.version)
    assert page.get_by_test_id("intent").is_visible()
    assert page.get_by_test_id("correction").count() == 1  # a better-reply box on each reply
    answer_id = page.locator("[data-completion-id]").get_attribute("data-completion-id")
    assert answer_id
    up.click()
    page.get_by_text("feedback stored").wait_for(timeout=10_000)
    page.screenshot(path=str(tmp_path / "chat-page.png"), full_page=True)
    stored = api.support.conversation(answer_id)
    assert stored.completion.reply == reply
    assert stored.feedback is not None
    assert stored.feedback.rating == "up"
    assert (tmp_path / "chat-page.png").stat().st_size > 0
