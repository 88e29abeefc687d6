"""The app through a real browser: time from upload to the shown result, warm.

    python benchmarks/app.py [--work /tmp/pcam-bench-app] [--repeats 5] [--shots DIR]

For simple-cnn and resnet50 (``--weights none``; speed does not depend on
the weights), a one-fold run is trained for one epoch on 64 real PCam tiles
(kept in --work and reused), served by ``streamlit run pcam/app.py`` on
127.0.0.1 and driven by headless Debian chromium through Selenium. One upload
warms the app (models loaded and kept by ``st.cache_resource``, graphs
traced); then, REPEATS times, the page is opened afresh, one real 96 px tile
is uploaded and the clock runs until its probability and its Grad-CAM figure
are drawn. Target (issue 14): under 1 s for simple-cnn on this CPU.
Screenshots of the page at desktop (1400 px) and phone (390 px) width, with
a tile and a 2x2-tile mosaic (which gets a heat map), go to --shots.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import REPO, require_real_tiles, table

APP = REPO / "pcam" / "app.py"


def train(work: Path, backbone: str) -> Path:
    """A one-fold run of ``backbone`` on 32 + 32 real tiles (made once)."""
    run = work / "runs" / backbone
    if (run / "fold_0" / "metrics.json").is_file():
        return run
    data = work / "data"
    if not data.is_dir():
        for label in ("0", "1"):
            (data / label).mkdir(parents=True)
            for tile in sorted((require_real_tiles() / "train" / label).iterdir())[:32]:
                (data / label / tile.name).symlink_to(tile)
    subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--data-dir", str(data),
                    "--positive", "1", "--store-dir", str(work / "store"), "--runs-dir",
                    str(work / "runs"), "--run", backbone, "--backbone", backbone,
                    "--weights", "none", "--epochs-frozen", "0", "--epochs-finetune", "1",
                    "--folds", "2", "--fold", "0", "--batch-size", "16", "--no-report"],
                   check=True, stdout=subprocess.DEVNULL)
    return run


def serve(run: Path, log: Path):
    from pcam.app import SERVER_OPTIONS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
         "--server.address", "127.0.0.1", *SERVER_OPTIONS, "--", "--run", str(run)],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return server, url
        except OSError:
            time.sleep(0.25)
    server.terminate()
    sys.exit(f"streamlit did not start; see {log}")


def browser(width: int, height: int):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(
        shutil.which("chromedriver") or "/usr/bin/chromedriver"))


def upload(driver, url: str, files: list[Path]) -> float:
    """Open the page, upload, wait until every file's number and pictures are drawn: seconds."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 300, poll_frequency=0.02,
                         ignored_exceptions=(StaleElementReferenceException,))
    field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
    start = time.perf_counter()
    field.send_keys("\n".join(map(str, files)))
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('p')].filter(p => /p\\(.+\\) = /.test("
        "p.textContent)).length >= arguments[0] && [...document.querySelectorAll("
        "'[data-testid=stImage] img')].filter(i => i.complete && i.naturalWidth > 0).length"
        " >= 2 * arguments[0] && !document.querySelector('[data-testid=stStatusWidget] "
        "button')", len(files)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pcam-bench-app"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shots", type=Path, default=None, help="default: WORK/shots")
    parser.add_argument("--backbones", default="simple-cnn,resnet50")
    args = parser.parse_args()
    shots = args.shots or args.work / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    tile = sorted((require_real_tiles() / "valid" / "1").iterdir())[0]

    rows = []
    for backbone in args.backbones.split(","):
        run = train(args.work, backbone)
        server, url = serve(run, args.work / f"streamlit-{backbone}.log")
        driver = browser(1400, 1000)
        try:
            cold = upload(driver, url, [tile])
            times = [upload(driver, url, [tile]) for _ in range(args.repeats)]
            if backbone == "simple-cnn":
                big = args.work / "mosaic-2x2.png"
                from PIL import Image

                from pcam.images import decode_image
                four = [decode_image(p)[0] for p in
                        sorted((require_real_tiles() / "valid" / "0").iterdir())[:2]
                        + sorted((require_real_tiles() / "valid" / "1").iterdir())[:2]]
                Image.fromarray(np.concatenate([np.concatenate(four[:2], axis=1),
                                                np.concatenate(four[2:], axis=1)])).save(big)
                for name, width in (("desktop", 1400), ("phone", 390)):
                    driver.set_window_size(width, 2600)
                    upload(driver, url, [tile, big])
                    time.sleep(0.5)
                    driver.save_screenshot(str(shots / f"app-{name}.png"))
        finally:
            driver.quit()
            server.terminate()
            server.wait()
        rows.append((backbone, f"{cold:.2f}", f"{statistics.median(times):.3f}",
                     f"{min(times):.3f}", f"{max(times):.3f}"))
    table(f"upload -> probability + Grad-CAM shown, one 96 px tile, headless chromium "
          f"({args.repeats} warm uploads, fresh page each)", rows,
          ("backbone", "first upload s", "warm median s", "min s", "max s"))
    print(f"\nscreenshots: {shots}")


if __name__ == "__main__":
    main()
