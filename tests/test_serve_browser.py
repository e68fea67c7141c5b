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


def test_the_page_reads_boxes_as_parse_boxes_does(server, page):
    from test_grounding import PARSED, SIZE
    from paddlemix.models.internvl2 import parse_boxes

    page.goto(server.url + "/")
    for text, _ in PARSED:
        got = page.evaluate("([text, w, h]) => parseBoxes(text, w, h)", [text, *SIZE])
        expected = parse_boxes(text, SIZE)
        assert [phrase for phrase, _ in got] == [phrase for phrase, _ in expected], text
        for (_, box), (_, want) in zip(got, expected):
            assert box == pytest.approx(want), text


def test_the_page_draws_an_answers_boxes_over_the_image(server, page):
    from PIL import Image

    from test_serve import data_url

    page.goto(server.url + "/")
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    answer = "<ref>the panda</ref><box>[[100, 250, 600, 750]]</box>"  # pixels 40, 50, 240, 150
    pixels = page.evaluate("""async ([url, text]) => {
      const div = document.createElement("div");
      document.getElementById("log").appendChild(div);
      await drawBoxes(div, url, text);
      const canvas = div.querySelector("canvas.boxes");
      const at = (x, y) => Array.from(canvas.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3));
      return {size: [canvas.width, canvas.height], edge: at(140, 50), inside: at(140, 100), outside: at(300, 180)};
    }""", [data_url(image), answer])
    assert pixels["size"] == [400, 200]
    assert max(pixels["edge"]) > 100 and pixels["inside"] == [0, 0, 0] and pixels["outside"] == [0, 0, 0]
    assert page.evaluate("""async (url) => {
      const div = document.createElement("div");
      await drawBoxes(div, url, "no boxes here");
      return div.querySelectorAll("canvas").length;
    }""", data_url(image)) == 0
