"""Latency and load of `imis serve` over HTTP on loopback, with the real imis-lite; prints one JSON line.

Starts `imis serve` as a subprocess on a free 127.0.0.1 port (stopped at the end) and measures:
  click_ms        click -> mask unpacked in the client (HTTP round trip + zlib/base64 decode of the label
                  plane), embedding cached, 512x512 btcv-demo slice: p50/p95 (target p95 <= 150 ms)
  uncached_open   a Colin27 slice never encoded: pixels shown (GET slice) and first mask (encode + decode)
  neighbour       the next slice after the background encoder had time: pixels and first mask
  load            N users clicking for D seconds, each on its own session: errors, p50/p95, clicks/s,
                  the server's peak RSS (VmHWM) against RSS_BOUND_MB, and whether it still answers afterwards

Usage: python benchmarks/app_latency.py [--clicks 60] [--users 8] [--duration 60] [--quick]
The CPU may be shared with other work: the JSON says how many cores there were and the load average.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BTCV = Path(os.environ.get("IMIS_SHARED", REPO.parent / "shared")) / "data" / "btcv-demo" / "image"
COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")
LIVER_POINTS = [(150, 250), (130, 280), (170, 230), (120, 300), (160, 270), (140, 240)]
#: The server's memory bound under load (peak RSS, VmHWM): imis-lite and torch (~0.6 GB), 48 cached
#: embeddings of ~4 MB, 16 sessions; measured 1021-1145 MB with 8 users (README). tests/app/test_load.py
#: asserts it.
RSS_BOUND_MB = 1536


def pct(values, q):
    return round(float(np.percentile(values, q)), 1) if values else None


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",
        "-m",
        "imis.cli",
        "serve",
        str(data_dir),
        "--port",
        str(port),
        "--max-sessions",
        "16",
    ]
    log = open(Path(tempfile.gettempdir()) / f"imis-serve-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_name = log.name
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/info", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server did not start; see {log.name}")


def log_path(proc: subprocess.Popen) -> str:
    return getattr(proc, "log_name", "?")


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def unpack(state: dict) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(state["plane"]["labels"])), "<u2")


def click(c: httpx.Client, sid: str, axis: str, index: int, x: float, y: float, pos: bool = True) -> float:
    t = time.perf_counter()
    r = c.post(
        f"/api/s/{sid}/prompt", json={"axis": axis, "index": index, "kind": "click", "value": [x, y, pos]}
    )
    r.raise_for_status()
    unpack(r.json())
    return 1000 * (time.perf_counter() - t)


def wait_encoded(c: httpx.Client, count: int, timeout: float = 300) -> None:
    t = time.monotonic()
    while c.get("/api/info").json()["embeddings"] < count:
        if time.monotonic() - t > timeout:
            raise SystemExit("background encoding did not finish")
        time.sleep(0.2)


def bench_clicks(c: httpx.Client, n: int) -> dict:
    sid = c.post("/api/open", json={"path": "ABD_037_71.png"}).json()["doc"]["id"]
    wait_encoded(c, 1)
    times = []
    for i in range(n):
        if i % 5 == 0:
            c.post(f"/api/s/{sid}/history", json={"op": "reset"})
        x, y = LIVER_POINTS[i % len(LIVER_POINTS)]
        times.append(click(c, sid, "z", 0, x, y, i % 5 != 4))
    return {"n": n, "p50": pct(times, 50), "p95": pct(times, 95), "max": round(max(times), 1)}


def bench_volume(c: httpx.Client) -> dict:
    before = c.get("/api/info").json()["embeddings"]
    sid = c.post("/api/open", json={"path": "ch2.nii.gz"}).json()["doc"]["id"]
    wait_encoded(c, before + 5)  # the opening view (z = 90) and its 4 neighbours
    out = {}
    for name, k in (("uncached_open", 40), ("neighbour", 41)):
        if name == "neighbour":
            wait_encoded(c, before + 10)  # z = 40 and its neighbours, encoded in the background
        t = time.perf_counter()
        c.get(f"/api/s/{sid}/slice", params={"axis": "z", "index": k}).raise_for_status()
        shown = 1000 * (time.perf_counter() - t)
        first = click(c, sid, "z", k, 90, 108)
        out[name] = {"slice": k, "pixels_ms": round(shown, 1), "first_mask_ms": round(shown + first, 1)}
    return out


def bench_load(url: str, images: list[str], duration: float) -> dict:
    """One user per image (each its own session and slice), all opened and encoded before the clock."""
    lat, errors, lock = [], [], threading.Lock()
    with httpx.Client(base_url=url, timeout=300) as c:
        before = c.get("/api/info").json()["embeddings"]
        sids = [c.post("/api/open", json={"path": name}).json()["doc"]["id"] for name in images]
        wait_encoded(c, before + len(set(images)))
    start = threading.Barrier(len(images))

    def user(seed: int) -> None:
        rng = random.Random(seed)
        sid = sids[seed]
        with httpx.Client(base_url=url, timeout=60) as c:
            start.wait()
            end = time.monotonic() + duration
            i = 0
            while time.monotonic() < end:
                if i % 5 == 0:
                    c.post(f"/api/s/{sid}/history", json={"op": "reset"})
                x, y = rng.choice(LIVER_POINTS)
                try:
                    ms = click(c, sid, "z", 0, x + rng.randint(-5, 5), y + rng.randint(-5, 5))
                    with lock:
                        lat.append(ms)
                except Exception as exc:
                    with lock:
                        errors.append(repr(exc)[:200])
                i += 1

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(images))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return {
        "users": len(images),
        "duration_s": round(wall, 1),
        "clicks": len(lat),
        "clicks_per_s": round(len(lat) / wall, 2),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50": pct(lat, 50),
        "p95": pct(lat, 95),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clicks", type=int, default=60)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--quick", action="store_true", help="20 clicks, 4 users for 10 s")
    args = ap.parse_args()
    if args.quick:
        args.clicks, args.users, args.duration = 20, 4, 10
    args.users, args.duration = min(args.users, 32), min(args.duration, 300)  # bounded, loopback only
    data = Path(tempfile.mkdtemp(prefix="imis-bench-data-"))
    load_images = sorted(p.name for p in BTCV.glob("ABD_03[789]_*.png"))[: args.users]
    for name in {"ABD_037_71.png", *load_images}:
        shutil.copy(BTCV / name, data)
    shutil.copy(COLIN, data)
    proc, url = start_server(data)
    try:
        with httpx.Client(base_url=url, timeout=300) as c:
            result = {"benchmark": "app_latency", "model": c.get("/api/info").json()["model"]}
            result["click_ms_512"] = bench_clicks(c, args.clicks)
            result.update(bench_volume(c))
        result["load"] = bench_load(url, load_images, args.duration)
        result["load"]["server_peak_rss_mb"] = rss_peak_mb(proc.pid)
        result["load"]["rss_bound_mb"] = RSS_BOUND_MB
        result["load"]["under_bound"] = result["load"]["server_peak_rss_mb"] < RSS_BOUND_MB
        result["load"]["still_answers"] = httpx.get(f"{url}/api/info", timeout=10).status_code == 200
        result["cpu"] = {"cores": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2), "shared": True}
    except BaseException:
        proc.send_signal(signal.SIGUSR1)  # the server dumps its threads' stacks into its log
        time.sleep(1)
        print(f"failed; server log: {log_path(proc)}", file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
