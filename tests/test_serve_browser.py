"""The chat page in headless Chromium: upload the demo image, ask, watch the answer stream in, ask again.

Debian's /usr/bin/chromium (installed by `make browser`) is driven by Playwright; no browser is
downloaded. The page's answers must be chat()'s answers for the same conversation.
"""
import os

import pytest

from paddlemix.models.internvl2 import load_image
from test_serve import DEMO_IMAGE, running_server

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MAX_NUM, MAX_TOKENS = 2, 60
# Counts every change of the last answer's text, to tell a streamed answer from one that arrives whole.
COUNT_UPDATES = """() => {
  window.textUpdates = 0;
  new MutationObserver(() => { window.textUpdates += 1; })
    .observe(document.getElementById("log"), {subtree: true, characterData: true, childList: true});
}"""


@pytest.fixture(scope="module")
def server(tiny_1b, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-browser-log") / "server.log"
    with running_server(tiny_1b, log, "--max_num", str(MAX_NUM)) as running:
        yield running


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; `make browser` installs it")
        pytest.skip(f"{CHROMIUM} is missing; `make browser` installs it")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield context.new_page()
        finally:
            context.close()


def wait_for_answer(page, index):
    """The text of answer number `index` once it has finished streaming."""
    answer = page.locator(".msg.assistant").nth(index)
    sync_api.expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
    return answer.locator(".text").inner_text()


def test_chat_page_streams_answers_and_keeps_the_conversation(server, page, model, tokenizer, tmp_path):
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#model")).to_have_text(server.model)
    page.fill("#max-tokens", str(MAX_TOKENS))
    page.set_input_files("#file", str(DEMO_IMAGE))
    sync_api.expect(page.locator("#previews img")).to_have_count(1)
    page.evaluate(COUNT_UPDATES)
    page.fill("#prompt", "What is in this image?")
    page.click("#send")
    first = wait_for_answer(page, 0)
    assert page.evaluate("window.textUpdates") > 3  # the text arrived piece by piece
    assert page.locator(".msg.user img").count() == 1

    page.fill("#prompt", "Tell me more.")
    page.press("#prompt", "Enter")
    second = wait_for_answer(page, 1)
    page.screenshot(path=str(tmp_path / "chat_page.png"))

    config = dict(max_new_tokens=MAX_TOKENS, do_sample=False)
    expected, history = model.chat(tokenizer, load_image(DEMO_IMAGE, max_num=MAX_NUM), "What is in this image?",
                                   config, return_history=True)
    assert first == expected
    assert second == model.chat(tokenizer, load_image(DEMO_IMAGE, max_num=MAX_NUM), "Tell me more.", config,
                                history=history)
