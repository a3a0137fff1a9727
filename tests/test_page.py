"""The web page at `/`, in a real headless browser: Debian's Chromium driven by Playwright.

One browser for the module and a fresh browser context (no shared cookies or cache) per page.
The browser is the system's `/usr/bin/chromium` (`.ci/run` installs Debian's package; no
`playwright install` download), started with the flags that keep it off the network except
for the server under test. Every page records its requests and its console errors: each test
checks that the page asked nothing of another host and broke none of its own rules (a
Content-Security-Policy or Trusted Types violation is a console error).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_serving import SETTINGS, running

from translator.api import Translator
from translator.serving import create_app

CHROMIUM = "/usr/bin/chromium"
# What the machine notes prescribe for headless Chromium here (as root, closed network).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MARKUP = [
    '<img src=x onerror="window.__ran = (window.__ran || 0) + 1">',
    "<script>window.__ran = (window.__ran || 0) + 1</script>",
    '<svg onload="window.__ran = 1"><b>bold</b>',
]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("no browser: playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        except Error as exc:
            pytest.skip(f"no browser: {CHROMIUM} cannot be launched: {exc}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tiny_export):
    with running(create_app(tiny_export, SETTINGS)) as client:
        yield str(client.base_url)


@pytest.fixture(scope="module")
def attention_server(attention_export):
    with running(create_app(attention_export, SETTINGS)) as client:
        yield str(client.base_url)


@pytest.fixture(scope="module")
def api(trained_dir) -> Translator:
    return Translator.load(trained_dir)


@pytest.fixture(scope="module")
def sentences(synthetic_files) -> list[str]:
    return synthetic_files["test.src"].read_text().splitlines()[:3]


@contextlib.contextmanager
def opened(browser, url: str, routes: dict | None = None, refusals: int = 0):
    """A fresh page on `url`/, loaded and ready (model info read); on exit, checks that it
    requested nothing from another host and logged no error but the `refusals` 4xx answers
    the test asked for (Chromium logs each as "Failed to load resource")."""
    context = browser.new_context()
    requests: list[str] = []
    errors: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    for path, body in (routes or {}).items():  # canned answers of this server's API
        context.route(f"{url}{path}", _answer(body))
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{url}/")
        try:
            page.wait_for_selector("#translate:enabled", timeout=30_000)
        except Exception as exc:  # say why: the page's own errors
            raise AssertionError(f"the page did not get ready; its errors: {errors}") from exc
        yield page
        assert requests and all(r.startswith(f"{url}/") for r in requests), requests
        refused = [e for e in errors if e.startswith("Failed to load resource: the server ")]
        assert len(refused) == refusals and [e for e in errors if e not in refused] == []
    finally:
        context.close()


def _answer(body):
    def handle(route):
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    return handle


def translate(page, text: str, beam_size: int | None = None) -> None:
    """Types `text`, picks the beam size, presses Translate and waits for the answer."""
    page.fill("#source", text)
    if beam_size is not None:
        page.select_option("#beam", str(beam_size))
    page.click("#translate")
    page.wait_for_selector("#translate:enabled")  # disabled while a request is in flight


def shown(page, selector: str) -> list[str]:
    return [e.text_content() for e in page.query_selector_all(selector)]


def test_the_page_translates_as_the_python_api(browser, server, api, sentences):
    with opened(browser, server) as page:
        assert page.text_content("#source-lang") == "xx"
        assert page.text_content("#target-lang") == "en"
        assert page.eval_on_selector_all("#beam option", "os => os.map(o => o.value)") == [
            "1",
            "5",
        ]
        assert page.input_value("#beam") == "1"  # the export's default decoding is greedy
        assert page.is_hidden("#attention-hint")  # no attention in this model

        translate(page, sentences[0])
        (want,) = api.translate([sentences[0]], return_scores=True)
        assert shown(page, ".translation") == [want[0].text]
        percent = f"{100 * math.exp(want[0].confidence):.1f}%"
        assert shown(page, ".confidence-value") == [f"confidence {percent}"]
        assert page.is_hidden("#error") and page.is_hidden("#attention")

        # Several lines, beam 5: one translation per line, each under its source line.
        translate(page, "\n".join(sentences) + "\n\n", beam_size=5)
        assert shown(page, ".translation") == api.translate(sentences, beam_size=5)
        assert shown(page, ".source") == sentences

        # Ctrl+Enter in the text box translates too.
        page.fill("#source", sentences[1])
        page.press("#source", "Control+Enter")  # the button is disabled until the answer
        page.wait_for_selector("#translate:enabled")
        assert shown(page, ".translation") == api.translate([sentences[1]], beam_size=5)


def test_markup_in_a_source_is_shown_as_text_and_never_run(browser, server):
    with opened(browser, server) as page:
        translate(page, "\n".join(MARKUP))
        assert shown(page, ".source") == MARKUP
        assert page.evaluate("window.__ran") is None
        assert page.query_selector_all("#results img, #results script, #results svg") == []


def test_markup_in_a_translation_and_in_pieces_is_shown_as_text_and_never_run(browser, server):
    # The tiny model never writes markup: the server's answers are replaced by canned ones.
    info = {
        "model": "<b>m</b>",
        "version": "1",
        "source_lang": "<i>xx</i>",
        "target_lang": MARKUP[0],
        "beam_sizes": [1],
        "default_beam_size": 1,
        "attention": True,
        "max_sentences": 4,
        "max_chars": 100,
    }
    answer = {
        "model": "m",
        "version": "1",
        "beam_size": 1,
        "translations": [{"text": MARKUP[1], "score": -1.0, "confidence": -0.5}],
    }
    attention = {
        "model": "m",
        "version": "1",
        "translation": MARKUP[2],
        "source_pieces": [MARKUP[0], "</s>"],
        "target_pieces": [MARKUP[1], "</s>"],
        "weights": [[0.25, 0.75], [1.0, 0.0]],
    }
    routes = {"/v1/info": info, "/v1/translate": answer, "/v1/attention": attention}
    with opened(browser, server, routes) as page:
        assert page.text_content("#model") == "<b>m</b>, version 1"
        assert page.text_content("#target-lang") == MARKUP[0]
        translate(page, "anything")
        assert shown(page, ".translation") == [MARKUP[1]]
        assert shown(page, "#heatmap thead th") == ["", MARKUP[0], "</s>"]
        assert shown(page, "#heatmap tbody th") == [MARKUP[1], "</s>"]
        assert page.text_content("#attention-translation") == MARKUP[2]
        assert page.evaluate("window.__ran") is None
        assert page.query_selector_all("main img, main script, main svg, main b, main i") == []


def test_server_errors_are_shown_on_the_page(browser, server, sentences):
    with opened(browser, server, refusals=2) as page:
        translate(page, sentences[0])
        assert page.is_visible("#results")

        too_long = "a" * (SETTINGS.max_chars + 1)
        translate(page, too_long)
        message = page.text_content("#error")
        assert page.is_visible("#error") and page.is_hidden("#results")
        assert message == (
            f"The server answered 400: text[0] has {SETTINGS.max_chars + 1} characters, "
            f"the limit is {SETTINGS.max_chars}"
        )

        translate(page, "\n".join(["a"] * (SETTINGS.max_sentences + 1)))
        assert "too many sentences" in page.text_content("#error")

        translate(page, "   \n ")
        assert page.text_content("#error") == "Type a sentence to translate."

        translate(page, sentences[0])  # a good request clears the message
        assert page.is_hidden("#error") and page.is_visible("#results")


def test_attention_heatmap_of_an_attention_model(browser, attention_server, attention_dir):
    from translator.introspect import attention_map

    api = Translator.load(attention_dir)
    text = "ena grun katu mag da blau vogal"
    with opened(browser, attention_server) as page:
        assert page.is_visible("#attention-hint")
        translate(page, text)
        assert shown(page, ".translation") == api.translate([text])
        page.wait_for_selector("#attention:not([hidden])")
        want = attention_map(api, text, beam_size=1)
        assert page.text_content("#attention-translation") == want.translation
        assert shown(page, "#heatmap thead th")[1:] == want.source_pieces
        assert shown(page, "#heatmap tbody th") == want.target_pieces
        weights = page.eval_on_selector_all(
            "#heatmap tbody tr",
            "rows => rows.map(r => [...r.cells].slice(1).map(d => Number(d.dataset.weight)))",
        )
        np.testing.assert_allclose(np.array(weights), want.weights, atol=1e-5)

        translate(page, f"{text}\n{text}")  # two sentences: translations, no heatmap
        assert len(shown(page, ".translation")) == 2
        assert page.is_hidden("#attention")
