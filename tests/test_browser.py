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


@pytest.mark.slow
def test_first_request_from_a_fresh_start_of_app_py(browser, tmp_path):
    """`python app.py` as a new user runs it, the example prompt at the default settings, twice.

    Records (no assertion on time: the machine is shared) the time from the click to the first
    dense text, to both answers complete, and the same for a second request, with the load
    average, in `app-first-request.json` beside the screenshot; both go to the folder named
    by `SLEB_BROWSER_RESULTS` (e.g. `results`) when it is set, else to pytest's tmp path.
    """
    import json
    import socket
    import sys
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    keep = Path(os.environ.get("SLEB_BROWSER_RESULTS") or tmp_path)
    keep.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("HF_HUB_OFFLINE", None)  # as a new user: the app finds out itself that the Hub is unreachable
    log_path = tmp_path / "app.log"
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log_path.open("w"),
                              stderr=subprocess.STDOUT)
    figures = {"prompt": "Explain in two sentences why the sky is blue.", "cpus": os.cpu_count()}
    shot = keep / "app-first-request.png"
    try:
        deadline = time.monotonic() + 900
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                browser.get(f"http://127.0.0.1:{port}/")
                break
            except Exception:
                assert time.monotonic() < deadline, "app.py did not start"
                time.sleep(1)
        WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
        figures["start_to_page_s"] = round(time.perf_counter() - started, 2)
        WebDriverWait(browser, 60).until(lambda d: "Order for" in d.find_element(By.CSS_SELECTOR, "#plan").text)
        plan = browser.find_element(By.CSS_SELECTOR, "#plan").text
        assert "Default for this model" in plan and "no search needed" in plan, plan
        browser.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(figures["prompt"])

        def value(css):
            return browser.execute_script(f"return document.querySelector('{css}').value")

        for name in ("first", "second"):
            figures["load_average_" + name] = round(os.getloadavg()[0], 2)
            clicked = time.perf_counter()
            browser.find_element(By.CSS_SELECTOR, "#run").click()
            first_dense, started_run = None, False
            while True:  # the previous answer stays until this run's first update clears it
                status = browser.find_element(By.CSS_SELECTOR, "#status").text
                dense = (value("#dense textarea") or "").strip()
                started_run = started_run or not dense or "Done." not in status
                if started_run and first_dense is None and dense:
                    first_dense = time.perf_counter() - clicked
                if started_run and status.strip() == "Done." and first_dense is not None:
                    break
                if browser.find_elements(By.CSS_SELECTOR, ".toast-body"):
                    break
                assert time.perf_counter() - clicked < 900, f"no answer; screenshot: {shot}"
                time.sleep(0.05)
            figures[name] = {"dense_first_text_s": first_dense and round(first_dense, 2),
                             "both_answers_s": round(time.perf_counter() - clicked, 2)}
            browser.save_screenshot(str(keep / f"app-{name}-request-end.png"))
            toasts = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".toast-body")]
            assert status == "Done.", f"status {status!r}, {toasts}"
            assert value("#dense textarea").strip() and value("#pruned textarea").strip()
            if name == "first":
                browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 100)
                browser.save_screenshot(str(shot))
                figures["table"] = browser.find_element(By.CSS_SELECTOR, "#stats").text
                figures["dense"] = value("#dense textarea")
                figures["pruned"] = value("#pruned textarea")
        assert "speedup" in figures["table"] and "ideal" in figures["table"], figures["table"]
        text = log_path.read_text()
        assert "unreachable" in text and "working offline" in text, text[-2000:]
        figures["startup_log"] = [line for line in text.splitlines() if "Ready in" in line or "Loaded" in line]
        (keep / "app-first-request.json").write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        server.terminate()
        server.wait(timeout=60)
