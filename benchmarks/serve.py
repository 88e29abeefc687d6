"""pcam-serve under load: batched server, unbatched server, and the model in-process.

    python benchmarks/serve.py [--backbone simple-cnn] [--clients 1,4,16,64] [--seconds 8]

A run of BACKBONE (one fold, trained one epoch on 200 real PCam tiles: speed
does not depend on the weights) is served on a loopback port by the real
server; CLIENTS threads each post one real 96 px PCam tile (JPEG, as a raw
body) after another for SECONDS, and every answer's latency is kept. For
each client count: requests/s and p50/p95/p99 latency of
  1. the server with dynamic batching (the default: up to 64 tiles, taking the
     requests that came while the last model call ran; --max-wait-ms to wait);
  2. the same server with --no-batching (one model call per request);
and, once, the ceiling: the same model called in-process on tiles in memory,
64 at a time (``predict_tiles``), in tiles/s. Peak memory (VmHWM) of each
server. Targets (issue 27, ResNet50 at 96 px on 2 cores): at 16 clients the
batched server >= 0.6x the ceiling and >= 2x the unbatched server; compact
CNN: p99 at 1 client under 100 ms.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import require_real_tiles, table

REPO = Path(__file__).resolve().parents[1]


def make_run(work: Path, backbone: str) -> Path:
    run = work / "runs" / backbone
    if (run / "fold_0" / "metrics.json").is_file():
        return run
    real = require_real_tiles()
    data = work / "data"
    for label in ("0", "1"):
        (data / label).mkdir(parents=True, exist_ok=True)
        for tile in sorted((real / "train" / label).iterdir())[:100]:
            if not (data / label / tile.name).exists():
                (data / label / tile.name).symlink_to(tile)
    subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--data-dir", str(data),
                    "--positive", "1", "--store-dir", str(work / "store"), "--runs-dir",
                    str(work / "runs"), "--run", backbone, "--backbone", backbone,
                    "--weights", "none", "--epochs-frozen", "0", "--epochs-finetune", "1",
                    "--folds", "2", "--fold", "0", "--batch-size", "32", "--no-report"],
                   check=True, stdout=subprocess.DEVNULL)
    return run


def start(run: Path, port: int, batching: bool, wait_ms: float = 0.0) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-c", "from pcam.commands.serve import main; main()", "--run",
           str(run), "--port", str(port), "--folds", "0"]
    proc = subprocess.Popen(cmd + (["--max-wait-ms", str(wait_ms)] if batching
                                   else ["--no-batching"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def load(url: str, body: bytes, clients: int, seconds: float) -> tuple[float, np.ndarray]:
    """Requests/s and latencies (s) of CLIENTS threads posting for SECONDS."""
    import httpx

    latencies, lock, stop = [], threading.Lock(), time.perf_counter() + seconds

    def client():
        with httpx.Client(timeout=60) as http:
            while time.perf_counter() < stop:
                began = time.perf_counter()
                answer = http.post(url + "/predict", content=body)
                assert answer.status_code == 200, answer.text
                with lock:
                    latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - began), np.asarray(latencies)


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ceiling(run: Path, seconds: float) -> float:
    """Tiles/s of the model in-process, 64 tiles a call (as the batcher sends them)."""
    from pcam.predict.ensemble import load_ensemble, predict_tiles

    ensemble = load_ensemble(run, [0])
    tiles = np.random.default_rng(0).integers(0, 256, (64, 96, 96, 3), np.uint8)
    predict_tiles(ensemble, tiles, (0,))
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        predict_tiles(ensemble, tiles, (0,))
        done += len(tiles)
    return done / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="simple-cnn")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--work", type=Path, default=Path("bench-serve"))
    parser.add_argument("--max-wait-ms", type=float, default=0.0,
                        help="the batched server's wait for more requests")
    args = parser.parse_args()

    import socket

    run = make_run(args.work, args.backbone)
    real = require_real_tiles()
    body = sorted((real / "valid" / "1").iterdir())[0].read_bytes()
    rows, memory = [], []
    top = ceiling(run, args.seconds)
    for batching in (True, False):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start(run, port, batching, args.max_wait_ms)
        url = f"http://127.0.0.1:{port}"
        try:
            load(url, body, 4, 2)  # warm: graphs traced for the batch sizes seen
            for clients in (int(c) for c in args.clients.split(",")):
                rate, lat = load(url, body, clients, args.seconds)
                p50, p95, p99 = (np.percentile(lat, q) * 1000 for q in (50, 95, 99))
                rows.append(("batched" if batching else "one call per request", clients,
                             f"{rate:.1f}", f"{rate / top:.2f}x", f"{p50:.1f}", f"{p95:.1f}",
                             f"{p99:.1f}"))
            memory.append(("batched" if batching else "unbatched", f"{peak_mb(proc.pid):,.0f}"))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    table(f"pcam-serve, {args.backbone} at 96 px, one 96 px JPEG tile per request "
          f"(ceiling: the model in-process, 64 tiles a call: {top:.0f} tiles/s)", rows,
          ("server", "clients", "requests/s", "of the ceiling", "p50 ms", "p95 ms", "p99 ms"))
    table("Peak resident memory of the server (MB)", memory, ("server", "VmHWM"))


if __name__ == "__main__":
    main()
