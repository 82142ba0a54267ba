"""The UI in a real headless Chromium (Debian's, with its driver; nothing is downloaded) against a
real pipeline: the live frame changes, a click on a class becomes a label that the buffer takes,
a retraining run follows and the served model version advances; a wrong token is refused.
Every test saves a screenshot (into ``$REMEMBRALL_SCREENSHOTS`` too when it is set)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.pipeline_helpers import FAST, Run, labelled_clip, wait_for
from tests.test_ui import learning_args, ui_url

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                                reason="Debian chromium and chromium-driver are not installed")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                 "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    if os.environ.get("REMEMBRALL_SCREENSHOTS"):
        target = Path(os.environ["REMEMBRALL_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def overview(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/overview", timeout=10) as resp:
        return json.load(resp)


def correct_label(sample_id: str) -> str:
    """The clip's truth: frames 0-23 of every 48 are "early" (tests/pipeline_helpers.labelled_clip)."""
    return "early" if int(sample_id.rsplit(":", 1)[1]) % 48 < 24 else "late"


def test_the_live_page_shows_a_frame_that_changes(tmp_path, make_video, browser) -> None:
    video = labelled_clip(tmp_path, make_video)
    run = Run(tmp_path / "out", *FAST, "--source", str(video), "--set", "sources.0.loop=0", "--set", "ui.live_fps=4")
    try:
        url = ui_url(run)
        browser.get(url + "/live")
        wait = WebDriverWait(browser, 60)
        img = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#live-cam0 img.live-frame"))
        wait.until(lambda d: (img.get_attribute("src") or "").startswith("data:image/jpeg;base64,"))
        tile = browser.find_element(By.ID, "live-cam0")
        first_seq, first_src = tile.get_attribute("data-seq"), img.get_attribute("src")
        wait.until(lambda d: tile.get_attribute("data-seq") != first_seq and img.get_attribute("src") != first_src)
        assert "model v" in tile.text and "frame" in tile.text
        wait.until(lambda d: d.execute_script("return document.querySelector('#live-cam0 img').naturalWidth") > 0)
        screenshot(browser, tmp_path, "ui-live")
        assert overview(url)["streams"][0]["id"] == "cam0"
    finally:
        run.stop()
    assert "Traceback" not in run.log()


def click_fresh(browser, selector: str) -> bool:
    """Click the element ``selector`` finds now; False (try again) when it was redrawn meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        browser.find_element(By.CSS_SELECTOR, selector).click()
    except StaleElementReferenceException:
        return False
    return True


def test_a_click_labels_retrains_and_advances_the_model(tmp_path, make_video, browser) -> None:
    video = labelled_clip(tmp_path, make_video)
    out = tmp_path / "out"
    run = Run(out, *FAST, *learning_args(video, "--set", "ui.undo_s=0"))
    try:
        url = ui_url(run)
        token = (out / "ui-token").read_text().strip()
        browser.get(f"{url}/?token={token}")  # the start-up URL: the token becomes a cookie
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: d.current_url.rstrip("/") == url)
        browser.get(url + "/label")
        sample = wait.until(lambda d: d.find_element(By.ID, "sample"))
        wait.until(lambda d: sample.is_displayed() and sample.get_attribute("data-id"))
        assert browser.find_element(By.ID, "token-banner").get_attribute("class").split().count("hidden") == 1
        clicked = []
        while len(clicked) < 8:
            current = wait.until(lambda d: sample.is_displayed() and sample.get_attribute("data-id")
                                 not in clicked and sample.get_attribute("data-id"))
            truth = correct_label(current)
            if len(clicked) == 0:  # the first by keyboard: 1-9 pick the n-th choice shown
                buttons = browser.find_elements(By.CSS_SELECTOR, "#choices button.choice")
                key = str([b.get_attribute("data-label") for b in buttons].index(truth) + 1)
                browser.find_element(By.TAG_NAME, "body").send_keys(key)
            else:  # the page may redraw the choices between finding the button and clicking it
                wait.until(lambda d, t=truth: click_fresh(d, f'#choices button[data-label="{t}"]'))
            wait.until(lambda d, c=current: "labelled " + c in d.find_element(By.ID, "label-result").text)
            clicked.append(current)
        wait.until(lambda d: int(d.find_element(By.ID, "labels-sent").text) >= 8)
        screenshot(browser, tmp_path, "ui-label")
        # the labels reach the buffer, a run happens, the served model version advances
        serving = wait_for(lambda: overview(url)["serving"].get("vision", {}).get("version"), timeout=180,
                           what=f"a retrained model serving\n{run.log()[-3000:]}")
        assert serving >= 1
        browser.get(url + "/")
        wait.until(lambda d: f"vision v{serving}" in d.find_element(By.ID, "cards").text
                   or "vision v" in d.find_element(By.ID, "cards").text)
        wait.until(lambda d: "infer" in d.find_element(By.ID, "stages").text)
        screenshot(browser, tmp_path, "ui-overview")
        browser.get(url + "/learning")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tbody tr"))
        # every class the clicks gave (which frames get selected, early or late ones, varies with load)
        given = {correct_label(c) for c in clicked}
        wait.until(lambda d: all(name in d.find_element(By.ID, "classes").text for name in given))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-versions .uplot"))
        screenshot(browser, tmp_path, "ui-learning")
    finally:
        run.stop()
    assert "Traceback" not in run.log()
    # the finished run's report: one file, opened from disk with the pipeline gone
    report = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "remembrall", "report", str(out), "--html", str(report)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "labels used 8" in done.stdout and "/static/" not in report.read_text()
    browser.get(report.as_uri())
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".uplot")) == 2)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) >= 1
    assert "late" in browser.find_element(By.ID, "classes").text
    screenshot(browser, tmp_path, "ui-report")
    missing = subprocess.run([sys.executable, "-m", "remembrall", "report", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_a_wrong_token_is_refused_in_the_browser(tmp_path, make_video, browser) -> None:
    video = labelled_clip(tmp_path, make_video)
    run = Run(tmp_path / "out", *FAST, *learning_args(video, "--set", "ui.undo_s=0"))
    try:
        url = ui_url(run)
        browser.get(url + "/label")
        wait = WebDriverWait(browser, 120)
        banner = wait.until(lambda d: d.find_element(By.ID, "token-banner"))
        wait.until(lambda d: banner.is_displayed())
        browser.find_element(By.ID, "token-input").send_keys("not-the-token")
        browser.find_element(By.ID, "token-save").click()
        sample = browser.find_element(By.ID, "sample")
        wait.until(lambda d: sample.is_displayed() and sample.get_attribute("data-id"))
        browser.find_element(By.CSS_SELECTOR, "#choices button.choice").click()
        wait.until(lambda d: "wrong UI token" in d.find_element(By.ID, "label-result").text)
        screenshot(browser, tmp_path, "ui-wrong-token")
        assert int(browser.find_element(By.ID, "labels-sent").text) == 0
    finally:
        run.stop()
