"""Load, bounded and on loopback only: `imis serve` as a subprocess with the real imis-lite, 8 users each
clicking on their own btcv-demo slice for 20 s (the benchmark runs 60 s): no error, the server's peak
memory under benchmarks.app_latency.RSS_BOUND_MB, and the server still answering afterwards."""

from __future__ import annotations

import shutil

import httpx
import pytest

from benchmarks.app_latency import RSS_BOUND_MB, bench_load, rss_peak_mb, start_server

pytestmark = pytest.mark.slow
USERS, SECONDS = 8, 20


def test_eight_users_stay_under_the_memory_bound(btcv_dir, tmp_path, model):
    images = sorted(p.name for p in (btcv_dir / "image").glob("ABD_03[789]_*.png"))[:USERS]
    for name in images:
        shutil.copy(btcv_dir / "image" / name, tmp_path)
    proc, url = start_server(tmp_path)
    try:
        load = bench_load(url, images, SECONDS)
        peak = rss_peak_mb(proc.pid)
        print(
            f"load test: {load['clicks']} clicks by {USERS} users, p95 {load['p95']} ms, peak RSS {peak} MB"
        )
        assert load["errors"] == 0, load["first_errors"]
        assert load["clicks"] >= USERS  # every user got answers
        assert 0 < peak < RSS_BOUND_MB
        assert httpx.get(f"{url}/api/info", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
