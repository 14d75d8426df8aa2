"""The server's web page in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (built from the same source as the browser, so their versions always match).

An image chosen in the page's file input (and one dropped on it) shows every class with the probability the
API gives for that image, the decision, and the Grad-CAM overlay; a file that is not an image shows the
server's error. Skipped only when chromium or chromedriver is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from medimg.serving.process import running_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
           ".ci/run installs them)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
WAIT_S = 90


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_browser")
    with running_server([f"ckpt_path={tiny_ckpt}", f"hydra.run.dir={tmp / 'run'}"], tmp / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message=f"the page never showed {what}")


def open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    wait_for(driver, lambda d: "classes" in d.find_element(By.ID, "model").text, "the model's description")


def shown_result(driver) -> tuple[dict[str, float], str, int]:
    """(class -> probability shown, the decision line, the overlay's width in pixels)."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#results tr")
    shown = {r.get_attribute("data-class"): float(r.get_attribute("data-probability")) for r in rows}
    width = driver.execute_script("return document.getElementById('overlay').naturalWidth")
    return shown, driver.find_element(By.ID, "prediction").text, int(width)


def test_choosing_an_image_shows_probabilities_and_overlay(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    api = httpx.post(f"{server.url}/predict", files=[("files", (image.name, image.read_bytes(), "image/png"))])
    expected = api.json()["results"][0]
    open_page(browser, server.url)
    assert "research use only" in browser.find_element(By.ID, "disclaimer").text.lower()
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "Done: lesion.png", "the result")
    shown, decision, overlay_width = shown_result(browser)
    assert list(shown) == sorted(expected["probabilities"], key=lambda c: -expected["probabilities"][c])
    for name, p in expected["probabilities"].items():
        assert shown[name] == pytest.approx(p, abs=1e-5)
    assert decision.startswith(f"lesion.png: {expected['prediction']}")
    assert overlay_width == 32  # the model's input size
    assert browser.find_element(By.ID, "error").text == ""


def test_a_dropped_image_is_analysed_too(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const canvas = document.createElement('canvas');
        canvas.width = 48; canvas.height = 40;
        const g = canvas.getContext('2d');
        g.fillStyle = '#a05030'; g.fillRect(0, 0, 48, 40);
        g.fillStyle = '#203080'; g.beginPath(); g.arc(24, 20, 10, 0, 7); g.fill();
        canvas.toBlob((blob) => {
          const data = new DataTransfer();
          data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.getElementById('drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
          done(true);
        }, 'image/png');
    """)
    wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "Done: dropped.png", "the dropped result")
    shown, decision, overlay_width = shown_result(browser)
    assert len(shown) == 4 and sum(shown.values()) == pytest.approx(1, abs=1e-4)
    assert decision.startswith("dropped.png: ") and overlay_width == 32


def test_a_file_that_is_not_an_image_shows_the_servers_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.png"
    notes.write_text("these are notes, not pixels")
    open_page(browser, server.url)
    browser.find_element(By.ID, "file").send_keys(str(notes))
    wait_for(browser, lambda d: d.find_element(By.ID, "error").text != "", "an error")
    error = browser.find_element(By.ID, "error").text
    assert error.startswith("422: cannot read image 'notes.png'")


def test_the_page_gives_headline_figures_and_keeps_the_detail_one_click_away(server, browser):
    from selenium.webdriver.common.by import By

    meta = httpx.get(f"{server.url}/metadata").json()
    open_page(browser, server.url)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#headline-list li"), "the headline figures")
    shown = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#headline-list li")]
    assert shown == [f["text"] for f in meta["headline"]] and "(95% interval" in shown[0]
    assert meta["calibration_note"] not in browser.find_element(By.ID, "model").text
    technical = browser.find_element(By.ID, "technical")
    assert technical.get_attribute("open") is None
    assert not browser.find_element(By.ID, "metrics").is_displayed()  # collapsed
    technical.find_element(By.TAG_NAME, "summary").click()
    assert browser.find_element(By.ID, "metrics").is_displayed()
    assert meta["calibration_note"] in browser.find_element(By.ID, "technical-list").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#metrics tr")) == len(meta["test_metrics"])
