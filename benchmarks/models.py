"""CPU cost of the SelM variants (random weights): one clip through ``forward``, one streaming step, peak memory.

Usage: ``python -m benchmarks.models [--models 'selm-*'] [--repeat 2] [--threads N]``

Each variant runs in a fresh subprocess so that memory figures do not mix. Columns:
  clip_s    median wall time of ``forward`` on one clip (T frames at the variant's resolution, gumbel="none");
  clip_cpu  median process CPU time (all threads) of the same; less sensitive than wall time to other load;
  step_s    median wall time of one streaming step: ``encode_frames`` on the newest frame, ``temporal`` on the
            T-frame window, ``decode_frames`` on the newest frame;
  peak_MB   peak resident memory above the level before the first forward (sampled every 2 ms, /proc);
  params_M  parameter count in millions;
  load_avg  1-minute load average after the run (other processes competing for the cores inflate wall times).
For scale (measured by others, not here): the official code takes ~6.0 s per 5-frame clip for S4-R50 at 224 and
~13.2 s for S4-PVT at 448 on the project's 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _PeakRss:
    """Samples the resident set size in a background thread while the ``with`` block runs."""

    def __enter__(self) -> "_PeakRss":
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _measure(name: str, repeat: int) -> dict:
    import torch
    from export.models import create_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model(name)
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(cfg.frames, 3, cfg.resolution, cfg.resolution, generator=g)
    audio = torch.rand(cfg.frames, cfg.audio_dim, generator=g)
    base = _rss()
    clip, clip_cpu, step = [], [], []
    with torch.inference_mode(), _PeakRss() as mem:
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            model(frames, audio)
            clip.append(time.perf_counter() - t0)
            clip_cpu.append(time.process_time() - c0)
        _, pooled, tokens = model.encode_frames(frames, audio)
        for _ in range(repeat):
            t0 = time.perf_counter()
            maps, newest_pooled, newest_token = model.encode_frames(frames[-1:], audio[-1:])
            pooled = torch.cat([pooled[1:], newest_pooled])      # the window slides by one frame
            tokens = torch.cat([tokens[1:], newest_token])
            gates, audio_out = model.temporal(pooled, tokens)
            model.decode_frames(maps, gates[-1:], audio_out[-1:])
            step.append(time.perf_counter() - t0)
    return dict(name=name, res=cfg.resolution, T=cfg.frames, clip_s=statistics.median(clip),
                clip_cpu=statistics.median(clip_cpu), step_s=statistics.median(step), peak_MB=(mem.peak - base) / 2**20,
                params_M=sum(p.numel() for p in model.parameters()) / 1e6, threads=torch.get_num_threads())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="selm-*", help="shell pattern over registered names (default selm-*)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(_measure(args.one, args.repeat)))
        return
    from export.models import list_models
    names = list_models(args.models)
    if not names:
        sys.exit(f"no registered model matches {args.models!r}")
    print(f"{'model':15s} {'res':>4s} {'T':>3s} {'clip_s':>8s} {'clip_cpu':>8s} {'step_s':>8s} {'peak_MB':>8s} "
          f"{'params_M':>9s} threads  load_avg")
    for name in names:
        cmd = [sys.executable, "-m", "benchmarks.models", "--one", name, "--repeat", str(args.repeat),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT)
        if out.returncode:
            print(f"{name:15s} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['name']:15s} {r['res']:4d} {r['T']:3d} {r['clip_s']:8.2f} {r['clip_cpu']:8.2f} {r['step_s']:8.2f} "
              f"{r['peak_MB']:8.0f} {r['params_M']:9.1f} {r['threads']:7d}  {os.getloadavg()[0]:8.2f}", flush=True)


if __name__ == "__main__":
    main()
