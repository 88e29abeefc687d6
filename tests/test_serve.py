"""pcam-serve: the real uvicorn server on a loopback port, spoken to over HTTP.

The tiny 2-fold run is served; real held-out PCam tiles are posted and the
answers compared with predict.py's for the same run, folds and TTA.
"""
from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import PCAM_REAL

httpx = pytest.importorskip("httpx", reason="the serve extra: pip install 'pcam[serve]'")
pytest.importorskip("fastapi", reason="the serve extra: pip install 'pcam[serve]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiles():
    if not PCAM_REAL.is_dir():
        pytest.skip(f"real PCam tiles not found at {PCAM_REAL}")
    return [p for label in ("0", "1") for p in sorted((PCAM_REAL / "valid" / label).iterdir())[:5]]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from pcam.commands.serve import main; main()",
                                 "--run", str(tiny_run.run_dir), "--port", str(port),
                                 "--max-body-mb", "50"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the server did not start: " + log.read_text()[-3000:]
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_answers_equal_predict_py(server, tiny_run, tiles, tmp_path):
    from pcam.commands.predict import predict
    from pcam.settings import PredictSettings

    out = tmp_path / "p.csv"
    predict(PredictSettings(run=str(tiny_run.run_dir), tta=1, images=tuple(map(str, tiles)),
                            out=str(out)))
    expected = pd.read_csv(out)[["normal", "tumour"]].to_numpy()
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in tiles]
    answer = httpx.post(server + "/predict", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    got = np.array([[im["probabilities"]["normal"], im["probabilities"]["tumour"]]
                    for im in body["images"]])
    assert [im["name"] for im in body["images"]] == [p.name for p in tiles]
    assert np.abs(got - expected).max() <= 1e-5
    assert body["model"]["folds"] == [0, 1] and all(im["tiles"] == 1 for im in body["images"])
    # One image as the raw body: the same answer.
    raw = httpx.post(server + "/predict", content=tiles[3].read_bytes(),
                     headers={"content-type": "image/jpeg"}, timeout=60).json()
    assert raw["images"][0]["probabilities"]["tumour"] == pytest.approx(got[3, 1], abs=1e-6)


def test_bad_input_is_a_4xx_and_the_server_goes_on(server, tiles):
    broken = httpx.post(server + "/predict", timeout=60,
                        files=[("files", ("scan.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"))])
    assert broken.status_code == 400 and "scan.png" in broken.json()["detail"]
    empty = httpx.post(server + "/predict", content=b"", timeout=60)
    assert empty.status_code == 400 and "no image" in empty.json()["detail"]
    huge = httpx.post(server + "/predict", content=b"\0" * (60 * 1000 * 1000), timeout=120,
                      headers={"content-type": "application/octet-stream"})
    assert huge.status_code == 413 and "50 MB" in huge.json()["detail"]
    assert httpx.get(server + "/nowhere", timeout=10).status_code == 404
    buffer = io.BytesIO()
    Image.open(tiles[0]).crop((0, 0, 64, 64)).save(buffer, format="PNG")
    small = httpx.post(server + "/heatmap", content=buffer.getvalue(), timeout=60)
    assert small.status_code == 400 and "smaller than" in small.json()["detail"]
    good = httpx.post(server + "/predict", content=tiles[0].read_bytes(), timeout=60)
    assert good.status_code == 200
    assert httpx.get(server + "/health", timeout=10).json()["status"] == "ok"


def test_concurrent_requests_are_batched_and_answered_alike(server, tiles):
    def ask(path):
        answer = httpx.post(server + "/predict", content=path.read_bytes(), timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["images"][0]["probabilities"]["tumour"]

    alone = {p: ask(p) for p in tiles}
    before = httpx.get(server + "/health", timeout=10).json()
    order = [tiles[i % len(tiles)] for i in range(50)]
    with ThreadPoolExecutor(50) as pool:
        together = list(pool.map(ask, order))
    after = httpx.get(server + "/health", timeout=10).json()
    np.testing.assert_allclose(together, [alone[p] for p in order], atol=1e-6)
    assert after["requests"] - before["requests"] == 50
    assert after["model_calls"] - before["model_calls"] < 50  # some calls served several


def test_heat_map_and_model(server, tiles):
    tiles_px = [np.array(Image.open(p).convert("RGB")) for p in tiles[:4]]
    mosaic = np.concatenate([np.concatenate(tiles_px[:2], 1), np.concatenate(tiles_px[2:], 1)])
    buffer = io.BytesIO()
    Image.fromarray(mosaic).save(buffer, format="PNG")
    picture = httpx.post(server + "/heatmap", content=buffer.getvalue(), timeout=120)
    assert picture.status_code == 200 and picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    grid = httpx.post(server + "/heatmap?format=json&stride=48", content=buffer.getvalue(),
                      timeout=120).json()
    assert np.array(grid["grid"]).shape == (len(grid["ys"]), len(grid["xs"])) == (3, 3)
    facts = httpx.get(server + "/model", timeout=10).json()
    assert facts["info"]["classes"] == ["normal", "tumour"] and facts["info"]["temperature"] != 1
    assert httpx.get(server + "/docs", timeout=10).status_code == 200
