"""Screenshots of the four UI pages for the README (docs/ui/*.png), taken in Debian's headless
Chromium against the demo pipeline (Big Buck Bunny) with a person labelling in the browser.

    python scripts/ui_screenshots.py [--out docs/ui]     # ~2 min; needs chromium, chromium-driver, selenium
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
def name_of(sample_id: str) -> str:
    """What a person might call a demo frame (an open vocabulary: the head grows): the clip opens
    on the bunny at its burrow, then moves out over the meadow."""
    return "burrow" if int(sample_id.rsplit(":", 1)[1]) % 396 < 200 else "meadow"


def shrink(png: bytes, path: Path, width: int = 1000) -> None:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "ui")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rb-shots-"))
    out = work / "out"
    cmd = [sys.executable, "-m", "remembrall", "run", "demo", "--out", str(out), "--metrics-port", "0",
           "--ui-port", "0", "--set", "sources.0.loop=0", "--set", "label.labeler=external", "--set", "ui.undo_s=0",
           "--set", "retrain.min_labels=8", "--set", "retrain.every_labels=8", "--set", "retrain.min_holdout=2",
           "--duration", "400"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=(work / "log").open("wb"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            try:
                url = json.loads((out / "status.json").read_text()).get("ui_url")
            except (OSError, ValueError):
                time.sleep(0.5)
        token = (out / "ui-token").read_text().strip()
        wait = WebDriverWait(driver, 120)
        driver.get(f"{url}/?token={token}")
        driver.get(url + "/label")
        sample = wait.until(lambda d: d.find_element(By.ID, "sample"))
        def serving() -> int:
            with urllib.request.urlopen(url + "/api/overview", timeout=10) as resp:
                return int(json.load(resp)["serving"].get("vision", {}).get("version") or 0)

        for i in range(32):  # in rounds of 8: each round is labelled with the model the last one trained
            if i and i % 8 == 0:
                WebDriverWait(driver, 180, poll_frequency=1).until(lambda d, n=i // 8: serving() >= n)
            current = wait.until(lambda d: sample.is_displayed() and sample.get_attribute("data-id"))
            box = driver.find_element(By.ID, "new-class")
            box.clear()
            box.send_keys(name_of(current))
            driver.find_element(By.ID, "submit-new").click()
            wait.until(lambda d, c=current: "labelled " + c in d.find_element(By.ID, "label-result").text)
            if i == 27:
                shrink(driver.get_screenshot_as_png(), args.out / "label.png")
        driver.get(url + "/live")
        wait.until(lambda d: (d.find_element(By.CSS_SELECTOR, "#live-grid img").get_attribute("src") or "")
                   .startswith("data:image/jpeg"))
        time.sleep(1)
        shrink(driver.get_screenshot_as_png(), args.out / "live.png")
        driver.get(url + "/")
        time.sleep(5)  # two metric collections: rates
        shrink(driver.get_screenshot_as_png(), args.out / "overview.png")
        driver.get(url + "/learning")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-versions .uplot"))
        time.sleep(1)
        shrink(driver.get_screenshot_as_png(), args.out / "learning.png")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(120)
    for name in ("overview", "live", "label", "learning"):
        print(args.out / f"{name}.png", (args.out / f"{name}.png").stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
