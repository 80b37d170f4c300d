"""A screenshot of ``siamindex serve``'s page with a "7" drawn on it (for the README).

Serves the index on 127.0.0.1, opens the page in Debian's chromium (Playwright), draws two
strokes with the mouse and saves the page once its answers are shown.

    python tools/page_screenshot.py --index mnist-train --out tools/figures/page.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from serving import running_server  # noqa: E402

from siamindex.index import Index  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="mnist-train")
    parser.add_argument("--out", default="tools/figures/page.png")
    args = parser.parse_args()
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        sys.exit("needs Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    name = Index.open(args.index).path.name
    with running_server(Index.open(args.index).path) as (_, base), sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1180, "height": 900})
        page.goto(base)
        page.select_option("#index", name)
        box = page.locator("#pad").bounding_box()
        assert box is not None

        def at(x: float, y: float) -> tuple[float, float]:
            return box["x"] + box["width"] * x, box["y"] + box["height"] * y

        page.mouse.move(*at(0.25, 0.2))
        page.mouse.down()
        page.mouse.move(*at(0.75, 0.2), steps=10)  # the bar of a 7
        page.mouse.move(*at(0.42, 0.85), steps=14)  # its stem
        page.mouse.up()
        page.wait_for_function("document.querySelectorAll('#membership tbody tr').length > 0")
        page.wait_for_function("[...document.images].every((i) => i.complete)")
        page.screenshot(path=args.out)
        print(f"{args.out}: verdict {page.text_content('#verdict')}")
        browser.close()


if __name__ == "__main__":
    main()
