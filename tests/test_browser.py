"""The demo in a real browser: Debian's Chromium loads the page, a prompt is typed and run, both answers show.

Chromium and its WebDriver come from `scripts/install_browser.sh` (apt-get; it does nothing
when they are installed), run once per session by the `chromium` fixture; where they cannot
be installed (no apt-get, not root) the test is skipped with the reason. The screenshot is
kept under pytest's tmp path; its path is in every assertion message.
"""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from .test_app import launch, tiny_config

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1400"]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio")


@pytest.fixture(scope="session")
def chromium():
    """Install Chromium once if it is missing; skip (with the reason) where that cannot be done."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.geteuid() != 0:
            pytest.skip("Chromium is not installed and installing it needs root: run scripts/install_browser.sh")
        run = subprocess.run(["bash", str(ROOT / "scripts" / "install_browser.sh")], capture_output=True, text=True,
                             timeout=900)
        if run.returncode != 0 or not CHROMIUM.exists():
            pytest.skip(f"Chromium could not be installed with apt-get: {(run.stderr or run.stdout)[-500:]}")
    return CHROMIUM


@pytest.fixture
def browser(chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in [*FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_page_runs_a_prompt_and_shows_both_answers(browser, tiny_model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    demo, client = launch(tiny_config(tiny_model_dir))
    shot = tmp_path / "app-screenshot.png"
    try:
        browser.get(demo.local_url)
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
        browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("The quick brown fox")
        browser.find_element(By.CSS_SELECTOR, "#run").click()

        def finished(d):
            status = d.find_element(By.CSS_SELECTOR, "#status").text
            return "Done." in status or bool(d.find_elements(By.CSS_SELECTOR, ".toast-body"))

        WebDriverWait(browser, 120).until(finished)
        browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 100)
        browser.save_screenshot(str(shot))
        dense = browser.find_element(By.CSS_SELECTOR, "#dense textarea").get_attribute("value")
        pruned = browser.find_element(By.CSS_SELECTOR, "#pruned textarea").get_attribute("value")
        status = browser.find_element(By.CSS_SELECTOR, "#status").text
        assert status == "Done.", f"status {status!r}; screenshot: {shot}"
        assert dense.strip() and pruned.strip(), f"dense {dense!r}, pruned {pruned!r}; screenshot: {shot}"
        assert "speedup" in browser.find_element(By.CSS_SELECTOR, "#stats").text, f"screenshot: {shot}"
        assert browser.find_elements(By.CSS_SELECTOR, "#removal-plot img"), f"no removal picture; screenshot: {shot}"
    finally:
        client.close()
        demo.close()
