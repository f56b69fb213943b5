"""The README's picture of the playground: docs/playground.png, 1200x800.

    python benchmarks/page_screenshot.py [-o docs/playground.png]

A `ctrlgan serve digits` on a free port and a headless Chromium (the helpers of bench_page.py);
the page at /, then class 7, seed 12 and a thickness of 1.5 chosen through its controls, as a
person would, and the viewport captured once the image is shown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_page import chromium, serving

ROOT = Path(__file__).resolve().parent.parent

SHOWN = """() => {
    const img = document.getElementById("image");
    const src = img.getAttribute("data-src-url") || "";
    return img.dataset.state === "ready" && img.complete && src.includes("seed=12")
        && src.includes("thickness");
}"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "playground.png")
    args = p.parse_args(argv)
    with serving() as url, chromium() as (_, browser):
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(15_000)
        page.goto(url + "/")
        page.wait_for_function("() => window.ctrlganReady === true")
        page.select_option("#class", "7")
        page.fill("#seed", "12")
        page.press("#seed", "Tab")
        page.fill("#steer-thickness", "1.5")
        page.wait_for_function(SHOWN)
        page.wait_for_load_state("networkidle")
        page.locator("#steer-thickness").blur()  # no focus ring or hover in the picture
        page.mouse.move(0, 0)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.output))
        print(f"wrote {args.output} ({page.url})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
