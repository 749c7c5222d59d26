"""Resampling to 16 kHz: CPU time per second of audio, ours (numpy) against resampy (numba) and soxr.

    python -m benchmarks.resample                      # 44.1 and 48 kHz, 10 s of noise, 20 ms microphone blocks
    python -m benchmarks.resample --rates 22050 96000 --seconds 30 --block-ms 10

For each input rate: ``runtime.resample.resample`` on the whole signal, ``StreamResampler`` fed the signal in
microphone-sized blocks (the live path), ``resampy.resample(kaiser_best)`` (the official front-end's; JIT warmed
up first) and soxr HQ (batch and streaming) when installed. Each figure is the best of ``--repeats`` runs, as
milliseconds of CPU per second of audio and as the fraction of real time it takes (1.0 = as slow as the audio).
Machines are noisy: compare figures within one run.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from runtime.resample import StreamResampler, resample

OUT_RATE = 16000


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def _streamed(make, push: Callable, x: np.ndarray, block: int) -> Callable[[], None]:
    def run() -> None:
        stream = make()
        for start in range(0, x.size, block):
            push(stream, x[start:start + block])
    return run


def _contenders(x: np.ndarray, rate: int, block: int) -> dict[str, Callable[[], object]]:
    runs = {
        "ours, batch": lambda: resample(x, rate, OUT_RATE),
        "ours, stream": _streamed(lambda: StreamResampler(rate, OUT_RATE), lambda s, b: s.push(b), x, block),
    }
    try:
        import resampy
        resampy.resample(x[:rate], rate, OUT_RATE, filter="kaiser_best")  # numba compiles on first call
        runs["resampy kaiser_best, batch"] = lambda: resampy.resample(x, rate, OUT_RATE, filter="kaiser_best")
    except ImportError:
        print("resampy not installed: skipped")
    try:
        import soxr
        runs["soxr HQ, batch"] = lambda: soxr.resample(x, rate, OUT_RATE, quality="HQ")
        runs["soxr HQ, stream"] = _streamed(lambda: soxr.ResampleStream(rate, OUT_RATE, 1, dtype="float64"),
                                            lambda s, b: s.resample_chunk(b), x, block)
    except ImportError:
        print("soxr not installed: skipped")
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resample", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[44100, 48000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--block-ms", type=float, default=20.0, help="streaming block (the microphone's: 20 ms)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for rate in args.rates:
        x = np.random.default_rng(0).standard_normal(int(rate * args.seconds)) * 0.1
        block = max(1, int(rate * args.block_ms / 1000))
        print(f"{rate} Hz -> {OUT_RATE} Hz, {args.seconds:g} s, stream blocks of {block} samples")
        for name, fn in _contenders(x, rate, block).items():
            cost = _best(fn, args.repeats) / args.seconds
            print(f"  {name:28s} {1e3 * cost:7.2f} ms per s of audio   {cost:.4f} x real time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
