"""The Streamlit app, through Streamlit's AppTest and through a real browser.

Both upload real PCam tiles (and, to AppTest, a larger image and files that
cannot be used) to the app running a simple-cnn run trained on real tiles,
and compare what the page shows with pcam's library on the same bytes.
"""
from __future__ import annotations

import configparser
import gc
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pcam.app import SERVER_OPTIONS
from pcam.data.images import decode_bytes
from tests.conftest import REPO
from tests.pcam_tiles_run import trained_run, valid_tiles

APP = REPO / "pcam" / "app.py"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


def library_probs(run: Path, blobs: list[bytes]) -> np.ndarray:
    """p(positive) of each upload by pcam's library, as scripts/predict.py computes it
    by default (8 views: the app's default too)."""
    from pcam.predict.ensemble import load_ensemble, predict_tiles
    from pcam.predict.images import answer_images, images_as_tiles
    from pcam.predict.tta import TTA_VIEWS

    ensemble = load_ensemble(run, [0])
    info = ensemble[0][1]
    images = [decode_bytes(b)[0] for b in blobs]
    tiles, owner = images_as_tiles(images, info.tile_size)
    return answer_images(predict_tiles(ensemble, tiles, TTA_VIEWS[8]), owner, len(images),
                         info.threshold).probs[:, 1]


def test_app_shows_the_library_numbers_and_skips_bad_files(run, tmp_path):
    pytest.importorskip("streamlit", reason="the app tests need streamlit (pip install "
                                            "-e '.[app]')")
    from PIL import Image
    from streamlit.testing.v1 import AppTest

    paths, _ = valid_tiles(2)
    blobs = [p.read_bytes() for p in paths]
    big = tmp_path / "big.png"  # 2x2 tiles, larger than a tile: gets a heat map
    tiles = [decode_bytes(b)[0] for b in blobs]
    Image.fromarray(np.concatenate([np.concatenate(tiles[:2], axis=1),
                                    np.concatenate(tiles[2:], axis=1)])).save(big)
    truncated = blobs[0][:len(blobs[0]) // 3]
    kather = REPO.parent / "shared" / "data" / "kather-8class" / "01_TUMOR"
    tiff = sorted(kather.iterdir())[0] if kather.is_dir() else big  # a class-folder TIFF, 150 px
    uploads = ([(p.name, b, "image/jpeg") for p, b in zip(paths, blobs)]
               + [("notes.txt", b"not an image", "text/plain"),
                  ("cut.jpg", truncated, "image/jpeg"),
                  ("big.png", big.read_bytes(), "image/png"),
                  ("class-folder.tif", tiff.read_bytes(), "image/tiff")])

    at = AppTest.from_file(str(APP), default_timeout=240)
    at.run()
    assert not at.exception
    assert any("not for diagnosis" in c.value for c in at.caption)
    at.text_input[0].input(str(run)).run()
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception, [e.value for e in at.exception]

    errors = [e.value for e in at.error]
    assert len(errors) == 2 and errors[0].startswith("notes.txt ") \
        and errors[1].startswith("cut.jpg "), errors
    assert all("\n" not in e for e in errors)
    table = at.dataframe[0].value
    assert list(table["path"]) == [p.name for p in paths] + ["big.png", "class-folder.tif"]
    expected = library_probs(run, blobs + [big.read_bytes(), tiff.read_bytes()])
    np.testing.assert_allclose(table["1"].to_numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(table["0"].to_numpy(), 1 - expected, rtol=0, atol=1e-6)
    # big.png (2x2 tiles) is answered as its 4 tiles, not shrunk to one.
    assert list(table["tiles"]) == [1] * len(paths) + [4, 1]
    assert any("**4 tiles** of 96 px" in m.value for m in at.markdown)
    shown = [float(m) for m in re.findall(r"p\(1\) = `([0-9.]+)`",
                                          " ".join(m.value for m in at.markdown))]
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    # Only the two images larger than a tile get a heat map.
    assert sum("Heat map" in m.value for m in at.markdown) == 2
    # The models' objects are left out of the full garbage collection that
    # Streamlit runs after every rerun (0.2-0.5 s each with TensorFlow loaded,
    # which delayed every picture on the page: benchmarks/app.py).
    assert gc.get_freeze_count() > 100_000
    gc.unfreeze()  # this test process goes on with other tests

    # A model file instead of a run folder: the same model, the same numbers.
    at.text_input[0].input(str(run / "fold_0" / "best.keras")).run()
    at.file_uploader[0].set_value(uploads[:1]).run()
    assert not at.exception and not at.error
    np.testing.assert_allclose(at.dataframe[0].value["1"], expected[:1], atol=1e-6)
    at.text_input[0].input(str(run / "fold_0" / "missing.keras")).run()
    assert [e.value for e in at.error] == [f"{run / 'fold_0' / 'missing.keras'}: no such "
                                           "model file"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(run, tmp_path):
    """``streamlit run pcam/app.py -- --run RUN`` on 127.0.0.1, stopped after the test."""
    pytest.importorskip("streamlit", reason="the app tests need streamlit")
    port = free_port()
    log = open(tmp_path / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
         "--server.address", "127.0.0.1", *SERVER_OPTIONS, "--", "--run", str(run)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def browser(width: int = 1400, height: int = 1000):
    """Headless Debian chromium driven by Selenium (``--no-sandbox``: CI runs as root)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are needed for the browser test: "
                    "apt-get install chromium chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))


def upload_and_read(driver, url: str, files: list[Path], timeout: float = 120) -> list[float]:
    """Open the app, upload ``files``, return the p(...) values the page shows."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    # The page is redrawn while the script runs: an element found may be gone
    # a moment later, so a stale one means "look again".
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    field = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    field.send_keys("\n".join(str(f) for f in files))
    pattern = re.compile(r"p\([^)]+\) = ([0-9.]+)")

    def shown(d):
        # One round trip per look (not one per paragraph): on a busy CPU each
        # WebDriver call can take seconds.
        texts, drawn = d.execute_script(
            "return [[...document.querySelectorAll('p')].map(p => p.textContent), "
            "[...document.querySelectorAll('[data-testid=stImage] img')].filter("
            "i => i.complete && i.naturalWidth > 0).length]")
        found = [pattern.search(t) for t in texts]
        values = [float(m.group(1)) for m in found if m]
        # Done when every file shows its number, its picture and its Grad-CAM, drawn.
        return values if len(values) == len(files) and drawn >= 2 * len(files) else False

    return wait.until(shown)


def test_browser_shows_the_library_probability(run, served, tmp_path):
    paths, _ = valid_tiles(1)
    driver = browser()
    try:
        shown = upload_and_read(driver, served, paths[:1])
        driver.save_screenshot(str(tmp_path / "app.png"))
    finally:
        driver.quit()
    expected = library_probs(run, [paths[0].read_bytes()])
    assert abs(shown[0] - expected[0]) <= 1e-4, (shown, expected)
    assert (tmp_path / "app.png").stat().st_size > 10_000


def entry_point(name: str) -> tuple[str, str]:
    """``(module, function)`` of a console script as setup.cfg declares it."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    scripts = dict(line.split(" = ") for line in
                   config["options.entry_points"]["console_scripts"].strip().splitlines())
    module, function = scripts[name].split(":")
    return module, function


def launcher(args: list[str], **kwargs) -> subprocess.Popen:
    """The ``pcam-app`` console script, run as pip's wrapper runs it (without
    needing pcam installed): its setup.cfg target called with ``args``."""
    module, function = entry_point("pcam-app")
    code = f"import sys; sys.argv[0] = 'pcam-app'; from {module} import {function}; {function}()"
    return subprocess.Popen([sys.executable, "-c", code, *args],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, **kwargs)


def test_pcam_app_serves_a_model_file_and_stops_with_its_launcher(run, tmp_path):
    """``pcam-app --run .../best.keras`` answers on 127.0.0.1, and a SIGTERM to
    the launcher stops the server it started (none is left serving)."""
    pytest.importorskip("streamlit", reason="the app tests need streamlit")
    port = free_port()
    health = f"http://127.0.0.1:{port}/_stcore/health"
    log = open(tmp_path / "pcam-app.log", "w")
    app = launcher(["--run", str(run / "fold_0" / "best.keras"), "--port", str(port),
                    "--address", "127.0.0.1"], cwd=tmp_path, stdout=log,
                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(health, timeout=1).status == 200:
                    break
            except OSError:
                assert app.poll() is None, (tmp_path / "pcam-app.log").read_text()
                time.sleep(0.25)
        else:
            pytest.fail(f"pcam-app did not answer: {(tmp_path / 'pcam-app.log').read_text()}")
        app.terminate()
        assert app.wait(timeout=30) == 0
        with pytest.raises(OSError):
            urllib.request.urlopen(health, timeout=1)
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
        log.close()


def test_pcam_app_refuses_a_run_that_is_not_there_in_one_line(tmp_path):
    for wrong, said in ((tmp_path / "best.keras", "no such model file"),
                        (tmp_path, "no run here")):
        app = launcher(["--run", str(wrong)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
        out, err = app.communicate(timeout=60)
        assert app.returncode == 2 and said in err and err.count("\n") == 1, err
        assert "Traceback" not in err and not out


def test_gradcam_panels_show_the_map_and_the_centre_square():
    """The page's Grad-CAM pictures (numpy + PIL): tile, map, colour bar,
    overlay; red where the map is 1, blue where it is 0; the label's centre
    square outlined in white on the tile and the overlay only."""
    from pcam.app import PANEL
    from pcam.report.figures import explanation_panels

    tile = np.full((96, 96, 3), 128, np.uint8)
    heat = np.zeros((96, 96), np.float32)
    heat[:48, :48] = 1
    strip = explanation_panels(tile, heat, label_region=32, side=PANEL)
    assert strip.dtype == np.uint8 and strip.shape[0] == PANEL
    maps = strip[:, PANEL + 8:2 * PANEL + 8].astype(int)
    assert maps[20, 20, 0] > 100 and maps[20, 20, 2] < 50            # 1: red
    assert maps[170, 170, 2] > 100 and maps[170, 170, 0] < 50        # 0: blue
    lo = (96 - 32) // 2 * PANEL // 96                                 # the square's edge
    for left in (0, strip.shape[1] - PANEL):
        assert (strip[lo + 10, left + lo] == 255).all()              # white outline
        assert (strip[lo + 10, left + lo + 3] != 255).any()          # inside: the picture
    assert not (maps[lo + 10, lo] == 255).all()                       # not on the map
    no_square = explanation_panels(tile, heat, label_region=0, side=PANEL)
    assert (no_square[lo + 10, lo] == 128).all()
