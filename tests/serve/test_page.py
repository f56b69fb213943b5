"""The playground page (ctrlgan/serve/static/, served at /) in a real browser: Chromium driven by
Playwright against the real `ctrlgan serve` subprocess of conftest.py. What the page shows is
read back from its pixels (the <img> drawn into a canvas at its natural size) and compared with
the in-process Generator byte for byte; the URL must hold the whole state, so opening it in a
fresh page restores every control and the same pixels.

Without a browser (no playwright, no chromium) these tests are skipped, except under CI=true,
where that is a failure (.ci/run installs Debian's chromium).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from ctrlgan.images import make_grid

WAIT = 5_000  # ms: a bound on any one wait in the page (an image is ~1 ms of work)
LOAD = 15_000  # ms: a page load, with the server's first requests
FEATURES = ("thickness", "slant", "size")

# The <img> drawn into a canvas at its natural size: RGBA bytes, row-major. A page that swaps
# the image while it is read (a repeated request for the same URL) is read again.
PIXELS = """async (selector) => {
    for (let attempt = 0; attempt < 20; attempt++) {
        const img = document.querySelector(selector);
        const src = img.src;
        try {
            await img.decode();
        } catch (error) {
            if (img.src !== src) continue;
            throw error;
        }
        if (img.src !== src || !img.complete || !img.naturalWidth) continue;
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        const context = canvas.getContext("2d");
        context.drawImage(img, 0, 0);
        const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
        return {width: canvas.width, height: canvas.height, rgba: Array.from(data)};
    }
    throw new Error("the image kept changing while it was read");
}"""

# True once #image shows a PNG whose URL holds every expected query parameter (and ``path``).
SHOWS = """([path, expected]) => {
    const img = document.getElementById("image");
    const src = img && img.getAttribute("data-src-url");
    if (!src || img.dataset.state !== "ready" || !img.complete || !img.naturalWidth) return false;
    const url = new URL(src, location.href);
    if (!url.pathname.endsWith(path)) return false;
    return Object.entries(expected).every(([k, v]) => url.searchParams.get(k) === v);
}"""

NO_CLASS2 = """() => {
    const src = document.getElementById("image").getAttribute("data-src-url");
    return !!src && !new URL(src, location.href).searchParams.has("class2");
}"""

# Every control's value, by id: what a URL must restore.
CONTROLS = """() => Object.fromEntries(
    [...document.querySelectorAll("input[id], select[id]")].map((e) => [e.id, e.value]))"""

ERROR_SHOWN = """() => {
    const e = document.getElementById("error");
    return !!e && e.checkVisibility() && e.textContent.trim().length > 0;
}"""
ERROR_HIDDEN = """() => {
    const e = document.getElementById("error");
    return !!e && (!e.checkVisibility() || e.textContent.trim().length === 0);
}"""


# The browser ---------------------------------------------------------------------------------
def chromium_path() -> str | None:
    """Debian's chromium (what .ci/run installs), or None for Playwright's own download."""
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (closed after it, before other modules' asyncio loops)."""
    required = os.environ.get("CI", "").lower() in ("true", "1")

    def missing(why: str):
        if required:
            pytest.fail(f"{why}; CI=true requires the browser (.ci/run installs it)", False)
        pytest.skip(why)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as p:
        executable = chromium_path()
        if executable is None and not Path(p.chromium.executable_path).exists():
            missing("no chromium: apt-get install chromium (or playwright install chromium)")
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


class Watch:
    """What went wrong in a page: console errors, uncaught exceptions, failed requests (but the
    ones it aborted) and responses >= 400, each a line; ``allow``: statuses a test expects."""

    def __init__(self, page):
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self.failed: list[str] = []
        self.responses: list[tuple[int, str]] = []
        page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        page.on("pageerror", lambda e: self.exceptions.append(str(e)))
        page.on("requestfailed", self.request_failed)
        page.on("response", lambda r: self.responses.append((r.status, r.url)))

    def request_failed(self, request) -> None:
        # a request the page aborted itself (a newer one superseded it) is no failure
        if request.failure != "net::ERR_ABORTED":
            self.failed.append(f"{request.url}: {request.failure}")

    def problems(self, allow: tuple[int, ...] = ()) -> list[str]:
        bad = [f"{s} {u}" for s, u in self.responses if s >= 400 and s not in allow]
        console = [
            m for m in self.console
            if not any(f"status of {s}" in m for s in allow)  # Chromium's "Failed to load ..."
        ]  # fmt: skip
        return [*self.exceptions, *self.failed, *bad, *console]


@pytest.fixture
def open_page(browser, server):
    """open_page(query="", base=server.url) -> a fresh page (own context: no shared cache)
    at ``/?query``, its Watch as ``page.watch``; ``ready=False`` skips waiting for the first
    image."""
    contexts = []

    def open_(query: str = "", base: str | None = None, ready: bool = True):
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT)
        page.watch = Watch(page)
        page.goto(f"{base or server.url}/" + (f"?{query}" if query else ""), timeout=LOAD)
        if ready:
            page.wait_for_function("() => window.ctrlganReady === true", timeout=LOAD)
        return page

    yield open_
    for context in contexts:
        context.close()


# Reading what the page shows -----------------------------------------------------------------
def wait_shows(page, path: str = "/image.png", **expected) -> dict[str, str]:
    """Wait until #image shows ``path`` with these query parameters; its query as a dict."""
    expected = {k.rstrip("_"): str(v) for k, v in expected.items()}
    page.wait_for_function(SHOWS, arg=[path, expected])
    return src_query(page)


def src_query(page) -> dict[str, str]:
    src = page.get_attribute("#image", "data-src-url")
    return {k: v[-1] for k, v in parse_qs(urlsplit(src).query, keep_blank_values=True).items()}


def pixels(page, selector: str = "#image") -> np.ndarray:
    """The image as drawn, HxW uint8 (the PNGs are grayscale: R = G = B, opaque)."""
    shot = page.evaluate(PIXELS, selector)
    rgba = np.array(shot["rgba"], np.uint8).reshape(shot["height"], shot["width"], 4)
    assert (rgba[..., 3] == 255).all(), "transparent pixels"
    assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
    return rgba[..., 0]


def expected(generator, cls, seed: int, **controls) -> np.ndarray:
    return generator.sample(classes=cls, seeds=[seed], output="uint8", **controls)[0, :, :, 0]


def choose(page, cls: int, seed: int) -> None:
    page.select_option("#class", str(cls))
    page.fill("#seed", str(seed))
    page.press("#seed", "Tab")  # typing fires input; leaving the field fires change


def page_query(page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(page.url).query).items()}


# The tests -----------------------------------------------------------------------------------
def test_page_loads_with_no_errors(open_page, generator):
    page = open_page()
    assert page.watch.problems() == []
    assert page.title()
    options = page.eval_on_selector_all("#class option", "os => os.map(o => o.value)")
    assert options == [str(i) for i in range(len(generator.classes))]
    for feature in generator.features:
        slider = page.locator(f"#directions input[type=range]#steer-{feature}")
        assert slider.get_attribute("data-feature") == feature
        assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("-3", "3")
        assert page.locator(f'button[data-reset="{feature}"]').count() == 1
    assert page.get_attribute("#image", "data-state") == "ready"
    shown = src_query(page)
    assert np.array_equal(
        pixels(page), expected(generator, int(shown["class"]), int(shown["seed"]))
    )
    page.wait_for_function(ERROR_HIDDEN)
    assert page.watch.problems() == []


def test_class_and_seed_show_exactly_the_sampled_pixels(open_page, generator):
    page = open_page()
    choose(page, 7, 12)
    shown = wait_shows(page, class_=7, seed=12)
    assert not {"steer", "class2", "truncation"} & {k for k, v in shown.items() if v}, shown
    assert shown.get("scale", "1") == "1"
    image = pixels(page)
    assert image.shape == generator.image_shape[1:]
    assert np.array_equal(image, expected(generator, 7, 12))
    # the download link saves that PNG; the snippets ask for the same image
    with page.expect_download() as download:
        page.click("#download")
    saved = np.asarray(Image.open(download.value.path()))
    factor = saved.shape[0] // image.shape[0]  # the page may offer it enlarged
    assert saved.shape == (image.shape[0] * factor, image.shape[1] * factor), saved.shape
    assert np.array_equal(saved, image.repeat(factor, 0).repeat(factor, 1))
    assert "classes=[7], seeds=[12]" in page.inner_text("#code-python")
    assert "--class 7" in page.inner_text("#code-cli")
    assert "--seed 12" in page.inner_text("#code-cli")
    assert "class=7&seed=12" in page.inner_text("#code-curl")
    assert page.watch.problems() == []


def test_steering_changes_the_image_and_the_url_restores_it(open_page, generator):
    page = open_page()
    choose(page, 7, 12)
    wait_shows(page, class_=7, seed=12)
    before = pixels(page)
    page.fill("#steer-thickness", "1.5")  # a range: sets the value, fires input and change
    shown = wait_shows(page, class_=7, seed=12, steer="thickness:1.5")
    after = pixels(page)
    assert not np.array_equal(after, before)
    assert np.array_equal(after, expected(generator, 7, 12, steer={"thickness": 1.5}))
    page.wait_for_function("() => location.search.includes('steer=')")
    assert page_query(page).get("steer") == "thickness:1.5", page.url

    page.fill("#steer-slant", "-1")
    page.fill("#truncation", "0.7")
    shown = wait_shows(page, class_=7, seed=12, truncation="0.7")
    steer = {"thickness": 1.5, "slant": -1.0}
    assert dict(s.split(":") for s in shown["steer"].split(",")) == {"thickness": "1.5",
                                                                      "slant": "-1"}  # fmt: skip
    image = pixels(page)
    assert np.array_equal(image, expected(generator, 7, 12, steer=steer, truncation=0.7))
    page.wait_for_function("() => new URL(location.href).searchParams.get('truncation') === '0.7'")
    controls = page.evaluate(CONTROLS)

    fresh = open_page(urlsplit(page.url).query)
    wait_shows(fresh, class_=7, seed=12, truncation="0.7")
    assert fresh.evaluate(CONTROLS) == controls
    assert src_query(fresh) == src_query(page)
    assert np.array_equal(pixels(fresh), image)
    assert page.watch.problems() == [] and fresh.watch.problems() == []

    # reset buttons: one direction, then all
    page.click('button[data-reset="thickness"]')
    wait_shows(page, class_=7, seed=12, steer="slant:-1")
    assert page.input_value("#steer-thickness") == "0"
    page.click("#reset-all")
    page.wait_for_function("() => !new URL(location.href).searchParams.get('steer')")
    assert [page.input_value(f"#steer-{f}") for f in FEATURES] == ["0", "0", "0"]


def test_class_mix(open_page, generator):
    page = open_page("class=7&seed=12")
    page.select_option("#class2", "1")
    page.fill("#mix", "0.5")
    wait_shows(page, class_=7, seed=12, class2=1, mix=0.5)
    assert np.array_equal(pixels(page), expected(generator, [(7, 1, 0.5)], 12))
    page.select_option("#class2", "")  # no mix again
    page.wait_for_function("() => !new URL(location.href).searchParams.get('class2')")
    # the address bar changes before the new image arrives, and the old mixed image also has
    # class=7 and seed=12: wait until the image itself has no class2 (SHOWS ignores extra keys)
    page.wait_for_function(NO_CLASS2)
    wait_shows(page, class_=7, seed=12)
    assert "class2" not in src_query(page)
    assert np.array_equal(pixels(page), expected(generator, 7, 12))
    assert page.watch.problems() == []


def test_grid(open_page, generator):
    page = open_page()
    page.select_option("#view", "grid")
    page.fill("#grid-classes", "1,7")
    page.fill("#grid-seeds", "0-3")
    page.press("#grid-seeds", "Tab")
    shown = wait_shows(page, "/grid.png", classes="1,7", seeds="0-3")
    padding = int(shown.get("padding", 2))
    images = generator.sample(classes=[1] * 4 + [7] * 4, seeds=[0, 1, 2, 3] * 2)
    assert np.array_equal(pixels(page), make_grid(images, nrow=4, padding=padding))
    assert page_query(page).get("view") == "grid"
    assert page.watch.problems() == []


@pytest.mark.parametrize(("method", "vary"), [("slerp", "both"), ("lerp", "noise")])
def test_interpolation_strip(open_page, generator, method, vary):
    page = open_page()
    page.select_option("#view", "interpolate")
    page.fill("#from-seed", "3")
    page.select_option("#from-class", "2")
    page.fill("#to-seed", "8")
    page.select_option("#to-class", "7")
    page.fill("#steps", "6")
    page.select_option("#method", method)
    page.select_option("#vary", vary)
    page.press("#steps", "Tab")
    shown = wait_shows(page, "/interpolate.png", steps=6, method=method, vary=vary)
    assert (shown["from"], shown["to"]) == ("3:2", "8:7"), shown
    assert shown.get("scale", "1") == "1"
    padding = int(shown.get("padding", 2))  # the server's default
    strip = pixels(page)
    _, h, w = generator.image_shape
    assert strip.shape == (h + 2 * padding, 6 * (w + padding) + padding)
    frames = [strip[padding : padding + h, padding + i * (w + padding) :][:, :w] for i in range(6)]
    first, last = {"both": ((2, 3), (7, 8)), "noise": ((2, 3), (2, 8))}[vary]
    assert np.array_equal(frames[0], expected(generator, *first))
    assert np.array_equal(frames[-1], expected(generator, *last))
    reference = generator.interpolate((3, 2), (8, 7), 6, method=method, vary=vary, output="uint8")
    assert np.array_equal(np.stack(frames), reference[..., 0])
    query = page_query(page)
    assert (query.get("view"), query.get("from"), query.get("to")) == ("interpolate", "3:2", "8:7")
    assert page.watch.problems() == []


@pytest.mark.parametrize(("query", "field"), [("class=99", "class"), ("seed=-4", "seed")])
def test_an_invalid_url_parameter_is_an_inline_error(open_page, generator, query, field):
    page = open_page(query, ready=False)
    page.wait_for_function(ERROR_SHOWN, timeout=LOAD)
    assert field in page.inner_text("#error").lower()
    assert page.watch.exceptions == []
    # the page stays usable: a valid choice clears the error
    choose(page, 7, 12)
    wait_shows(page, class_=7, seed=12)
    page.wait_for_function(ERROR_HIDDEN)
    assert np.array_equal(pixels(page), expected(generator, 7, 12))
    assert page.watch.problems(allow=(400,)) == []


@pytest.mark.parametrize(
    ("query", "field", "shown"),
    [("view=bogus", "view", {"view": "single"}), ("model=nope", "model", {"model": "digits"}),
     ("class=3&seed=5&truncation=5", "truncation", {"truncation": "2"}),
     ("class=3&seed=5&steer=thickness:9", "steer.thickness", {"steer": "thickness:3"})],
)  # fmt: skip
def test_a_url_value_the_controls_cannot_show_is_replaced_with_a_note(
    open_page, generator, query, field, shown
):
    """The image always matches the controls: a value beyond a slider or an unknown view or
    model is replaced by what the controls show, the URL says so, and a note names the field."""
    page = open_page(query)
    assert field in page.inner_text("#error")
    query_now = page_query(page)
    for key, value in shown.items():
        assert query_now[key] == value, (key, query_now)
    if "truncation" in shown:
        assert page.input_value("#truncation") == "2"
        want = expected(generator, 3, 5, truncation=2.0)
        assert np.array_equal(pixels(page), want)
    if "steer" in shown:
        assert page.input_value("#steer-thickness") == "3"
        assert np.array_equal(pixels(page), expected(generator, 3, 5, steer={"thickness": 3.0}))
    choose(page, 7, 12)  # the next change clears the note
    wait_shows(page, class_=7, seed=12)
    page.wait_for_function(ERROR_HIDDEN)


def test_a_full_queue_is_shown_and_the_page_recovers(open_page, start_server, generator):
    """A real saturated server: --max-queue 1 --max-batch-size 1 under a flood of single-image
    requests from threads; the page's request meets a 429, shows it, and once the flood stops
    shows the right image without a user action (Retry-After: 1)."""
    busy = start_server("--max-queue", "1", "--max-batch-size", "1", "--no-grpc")
    page = open_page("class=7&seed=12", base=busy.url)
    stop = threading.Event()

    def flood(k: int) -> None:
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=busy.url, timeout=30.0) as client:
            while not stop.is_set():
                cls, seed = rng.integers(0, 10), rng.integers(0, 1 << 30)
                client.get(f"/v1/models/digits/image.png?class={cls}&seed={seed}")

    threads = [threading.Thread(target=flood, args=(k,), daemon=True) for k in range(8)]
    try:
        for t in threads:
            t.start()
        statuses = []
        for seed in range(100, 160):  # until the page's own request meets the full queue
            with page.expect_response(lambda r: "/image.png" in r.url) as answer:
                page.fill("#seed", str(seed))
            statuses.append(answer.value.status)
            if statuses[-1] == 429:
                break
        assert 429 in statuses, f"the page never met a full queue: {statuses}"
        page.wait_for_function(ERROR_SHOWN)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    message = page.inner_text("#error").lower()
    assert "busy" in message or "queue" in message or "429" in message, message
    wait_shows(page, class_=7, seed=seed)
    page.wait_for_function(ERROR_HIDDEN)
    assert np.array_equal(pixels(page), expected(generator, 7, seed))
    assert page.watch.problems(allow=(429,)) == []
    assert busy.stop() == 0


def test_the_copied_code_makes_the_shown_image(open_page, generator, tmp_path):
    """The Python, CLI and curl snippets, run as they are, give the image shown (at their
    scale, with save_grid's padding for the first two)."""
    page = open_page("class=7&seed=12&steer=thickness:1.5,slant:-1&truncation=0.7")
    wait_shows(page, class_=7, seed=12, truncation=0.7)
    image = pixels(page)
    steer = {"thickness": 1.5, "slant": -1.0}
    assert np.array_equal(image, expected(generator, 7, 12, steer=steer, truncation=0.7))

    def enlarged(path: Path, padding: int) -> None:
        saved = np.asarray(Image.open(path))
        k = saved.shape[1] // (image.shape[1] + 2 * padding)
        assert np.array_equal(saved, np.pad(image, padding).repeat(k, 0).repeat(k, 1)), path

    python = page.inner_text("#code-python")
    (tmp_path / "snippet.py").write_text(python)
    subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, check=True, timeout=60)
    (written,) = tmp_path.glob("*.png")
    enlarged(written, 2)
    written.unlink()

    lines = [x for x in page.inner_text("#code-cli").splitlines() if x and not x.startswith("#")]
    (command,) = lines
    argv = shlex.split(command)
    assert argv[0] == "ctrlgan", command
    subprocess.run([sys.executable, "-m", "ctrlgan", *argv[1:]], cwd=tmp_path, check=True,
                   timeout=60, capture_output=True)  # fmt: skip
    (written,) = tmp_path.glob("*.png")
    enlarged(written, 2)

    curl = shlex.split(page.inner_text("#code-curl"))
    assert curl[0] == "curl", curl
    (url,) = [a for a in curl if a.startswith("http")]
    (tmp_path / "curl.png").write_bytes(httpx.get(url, timeout=30).raise_for_status().content)
    enlarged(tmp_path / "curl.png", 0)
