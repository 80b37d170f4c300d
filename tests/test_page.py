"""The page at / in a real headless browser (Debian's chromium, driven by Playwright): draw a
digit with the mouse and read what the page says, against what the API says for the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import chromium_or_skip
from PIL import Image
from serving import running_server

from siamindex.build import BuildSettings, build_index

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def raw_pixel_index(tmp_path_factory, small_idx_dir) -> Path:
    """An index whose answers mean something without training: a Keras encoder that outputs
    the raw pixels (1-NN about 0.85 on these 1,000 train images)."""
    import keras

    folder = tmp_path_factory.mktemp("page")
    inputs = keras.Input((28, 28, 1))
    encoder = keras.Model(inputs, keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
    encoder.save(folder / "raw.keras")
    path = folder / "digits"
    settings = BuildSettings(
        encoder=folder / "raw.keras", index=path, data_dir=small_idx_dir, splits=("train",),
        progress=False,
    )  # fmt: skip
    build_index(settings)
    return path


def test_drawing_a_one_shows_its_matches_and_verdicts(raw_pixel_index, tmp_path):
    from playwright.sync_api import sync_playwright

    with running_server(raw_pixel_index) as (_, base), sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_or_skip(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        offline = []
        page.on("request", lambda r: offline.append(r.url) if not r.url.startswith(base) else None)
        page.goto(base)
        box = page.locator("#pad").bounding_box()
        assert box is not None
        x = box["x"] + box["width"] * 0.5
        page.mouse.move(x, box["y"] + box["height"] * 0.15)
        page.mouse.down()
        page.mouse.move(x + 4, box["y"] + box["height"] * 0.85, steps=12)  # a "1"
        page.mouse.up()
        page.wait_for_function("document.querySelectorAll('#membership tbody tr').length > 0")
        page.wait_for_function("[...document.images].every((i) => i.complete)")
        verdict = page.text_content("#verdict")
        members = {
            row.get_attribute("data-class"): row.locator("td").nth(1).text_content()
            for row in page.locator("#membership tbody tr").all()
        }
        shown = page.evaluate(
            "[...document.querySelectorAll('#matches img')].map(i => i.naturalWidth)"
        )
        png = page.evaluate("document.getElementById('pad').toDataURL('image/png').split(',')[1]")
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert offline == []  # no request left the server: nothing from a CDN
    assert verdict == "1"
    assert set(members) == {str(d) for d in range(10)} and members["1"] == "yes"
    assert shown == [28] * 5  # the 5 nearest stored images, loaded
    # The page says what the API says for the same pixels.
    with running_server(raw_pixel_index) as (_, base):
        api = httpx.post(
            f"{base}/v1/indexes/digits/query", json={"images": [{"png": png}], "k": 5}
        ).json()["result"][0]
        checked = httpx.post(
            f"{base}/v1/indexes/digits/check",
            json={"claims": [{"image": {"png": png}, "class": str(d)} for d in range(10)]},
        ).json()["result"]["results"]
    assert api["predicted"] == verdict
    assert {r["class"]: "yes" if r["is_member"] else "no" for r in checked} == members
    with Image.open(tmp_path / "page.png") as shot:  # the page rendered, in colour
        pixels = np.asarray(shot.convert("RGB"), dtype=np.int16)
    green = (pixels[..., 1] - pixels[..., 0] > 40) & (pixels[..., 1] - pixels[..., 2] > 30)
    assert green.sum() >= 50  # the one green "yes" (about 130 pixels)
