"""Soak and load: a live Segmenter fed for many minutes, watched for memory, handle and thread leaks (not a test).

    python -m benchmarks.soak --model-dir artifacts/selm-s4-r50                 # paced, 10 minutes
    python -m benchmarks.soak --model-dir DIR --mode flood --minutes 3 --json soak.json

A clip (generated, 10 s at 10 fps, 640x360, or --clip) is decoded with ``runtime.capture.VideoSource`` in a loop,
re-opened at every end (decoder open/close is where handles leak), and its frames are pushed to a
``runtime.Segmenter`` with ``time.monotonic()`` stamps. Audio comes from the file-fed fake ALSA microphone
(``runtime.microphone.Microphone("mic")``) whose input is a FIFO written at real-time pace (16 kHz mono) by this
process; the measured pipeline runs in a child process whose HOME holds the ``.asoundrc``. Without PortAudio the
clip's audio is pushed at real-time pace instead, and the report says so.

Modes: ``paced`` plays the clip at its own frame rate; ``flood`` pushes a frame every 5 ms (far faster than
inference), so the Segmenter must drop frames and keep at most one pending.

Every --sample-every seconds one line: elapsed time, RSS (VmRSS), threads, open fds (from /proc), results and
dropped frames so far, latency p50/p95 (push to result) of the interval. Then a summary and the verdict; the run
fails (exit 1) when any rule fails, and names it with its figures:

* rss: the largest RSS sampled in the last minute exceeds the largest sampled in the first minute by > 5 %;
* handles: the fewest open fds (or threads) sampled in the last minute exceed the most sampled in the first
  minute (a count that never comes back to its post-warm-up level);
* closed: after everything is closed, more fds or threads than before anything was opened (counted after a
  first Segmenter segmented one live frame and was closed: that leaves process-wide threads and files);
* live: an interval after the first produced no result, or a component raised;
* backlog: pushed - segmented - dropped ever exceeded 2 (one pending frame, one being segmented);
* flood only: frames were not pushed at least twice as fast as they were segmented (the load was no flood).

Needs at least 2 minutes. The machine's other load shows in the latencies: compare runs on the same machine.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
FIFO_BLOCK = 1280  # frames per FIFO write: whole multiples of the plugin's reads (640 here), <= PIPE_BUF bytes
FLOOD_INTERVAL = 0.005
MINUTE = 60.0
RSS_GROWTH = 0.05
MAX_BACKLOG = 2

ASOUNDRC = """pcm.filemic {{
    type file
    slave.pcm "null"
    infile "{infile}"
    file "/dev/null"
    format "raw"
}}
pcm.mic {{
    type plug
    slave {{ pcm "filemic" format S16_LE rate {rate} channels 1 }}
}}
"""


# -- parent: clip, FIFO, fake microphone, child process --------------------------------------------------------
def _clip_audio(clip: Path) -> np.ndarray:
    """The clip's audio track as int16 mono at 16 kHz."""
    import av

    with av.open(str(clip)) as container:
        if not container.streams.audio:
            raise SystemExit(f"{clip} has no audio track; the soak needs one")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        parts = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype("<i2")


class FifoWriter(threading.Thread):
    """Writes ``pcm`` in a loop into a FIFO at real-time pace; re-opens it whenever its reader closes it."""

    def __init__(self, path: Path, pcm: np.ndarray):
        super().__init__(name="fifo-writer", daemon=True)
        self.path = path
        blocks = -(-pcm.size // FIFO_BLOCK)
        self.data = np.resize(pcm, blocks * FIFO_BLOCK).tobytes()
        self._halt = threading.Event()

    def run(self) -> None:
        size, pos = FIFO_BLOCK * 2, 0
        while not self._halt.is_set():
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens it (PortAudio's probes do too)
            due = time.monotonic()
            try:
                while not self._halt.is_set():
                    os.write(fd, self.data[pos:pos + size])
                    pos = (pos + size) % len(self.data)
                    due += FIFO_BLOCK / RATE
                    delay = due - time.monotonic()
                    if delay > 0:
                        self._halt.wait(delay)
                    elif delay < -0.5:  # the reader stalled: go on in real time rather than catch up
                        due = time.monotonic()
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)

    def stop(self) -> None:
        self._halt.set()
        try:  # release an open() waiting for a reader
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self.join(timeout=2)


def _parent(args: argparse.Namespace, argv: list[str]) -> int:
    from runtime.demo_clip import make_clip

    with tempfile.TemporaryDirectory(prefix="avs-soak-") as tmp:
        work = Path(tmp)
        clip = Path(args.clip) if args.clip else \
            make_clip(work / "clip.mp4", seconds=10.0, fps=10.0, width=640, height=360).path
        pcm = _clip_audio(clip)
        pcm.tofile(work / "audio.raw")  # for the fallback without PortAudio
        fifo = work / "mic.fifo"
        os.mkfifo(fifo)
        home = work / "home"
        home.mkdir()
        (home / ".asoundrc").write_text(ASOUNDRC.format(infile=fifo, rate=RATE))
        writer = FifoWriter(fifo, pcm)
        writer.start()
        try:
            cmd = [sys.executable, "-m", "benchmarks.soak", *argv, "--clip", str(clip), "--child-dir", str(work)]
            return subprocess.run(cmd, cwd=REPO, env={**os.environ, "HOME": str(home)}).returncode
        finally:
            writer.stop()


# -- child: the measured pipeline ------------------------------------------------------------------------------
def proc_counts() -> dict:
    """This process's RSS (MB), threads and open fds, from /proc."""
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return {"rss_mb": rss_kb / 1024, "threads": len(os.listdir("/proc/self/task")),
            "fds": len(os.listdir("/proc/self/fd"))}


def proc_handles() -> dict:
    """Names of this process's threads and targets of its open fds (to tell what a leak is made of)."""
    def read(path: Path, how: Callable[[Path], str]) -> str:
        try:
            return how(path)
        except OSError:  # gone meanwhile
            return "?"
    tasks = sorted(read(p / "comm", lambda q: q.read_text().strip()) for p in Path("/proc/self/task").iterdir())
    fds = sorted(read(p, os.readlink) for p in Path("/proc/self/fd").iterdir())
    python = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
    return {"threads": tasks, "fds": fds, "python_threads": python}


class Pipeline:
    """Video loop, audio feed and result collector around one Segmenter, each in its own thread."""

    def __init__(self, segmenter, clip: Path, mode: str, work: Path):
        self.seg, self.clip, self.mode, self.work = segmenter, clip, mode, work
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.loops = 0
        self.audio_samples = 0
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._mic = None
        self.audio_source = self._open_audio()
        self._threads = [threading.Thread(target=self._guard(f), name=f"soak-{f.__name__}", daemon=True)
                         for f in (self._video, self._audio, self._collect)]

    def _open_audio(self) -> str:
        from runtime.microphone import Microphone, MicrophoneError

        try:
            self._mic = Microphone("mic").start()
            return "fake ALSA microphone fed by a real-time FIFO"
        except MicrophoneError as exc:
            return f"clip audio pushed at real-time pace (fake microphone unavailable: {exc})"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self._mic is not None:
            self._mic.close()

    def take_latencies(self) -> list[float]:
        with self._lock:
            taken, self.latencies = self.latencies, []
        return taken

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # noqa: BLE001  (reported by the sampler, fails the run)
                self.errors.append(f"{body.__name__}: {type(exc).__name__}: {exc}")
        return run

    def _video(self) -> None:
        from runtime.capture import VideoSource

        next_push = time.monotonic()
        while not self.stop.is_set():
            with VideoSource(self.clip) as video:  # a new decoder every loop
                self.loops += 1
                start = None
                while not self.stop.is_set():
                    frame = video.read(timeout=5.0)
                    if frame is None:
                        if not video.is_streaming():
                            break
                        continue
                    if self.mode == "paced":
                        start = time.monotonic() - frame.timestamp if start is None else start
                        next_push = start + frame.timestamp
                    else:
                        next_push = max(next_push + FLOOD_INTERVAL, time.monotonic() - FLOOD_INTERVAL)
                    delay = next_push - time.monotonic()
                    if delay > 0:
                        self.stop.wait(delay)
                    self.seg.push_frame(frame.image, time.monotonic())
                if video.error:
                    raise RuntimeError(video.error)

    def _audio(self) -> None:
        if self._mic is not None:
            while not self.stop.wait(0.02):
                for chunk in self._mic.read():
                    self.seg.push_audio(chunk.samples, chunk.sample_rate, chunk.timestamp)
                    self.audio_samples += chunk.samples.shape[0]
            return
        pcm = np.fromfile(self.work / "audio.raw", "<i2")
        block = RATE // 50
        start = time.monotonic()
        while not self.stop.is_set():
            first = self.audio_samples
            self.stop.wait(max(0.0, start + (first + block) / RATE - time.monotonic()))
            index = np.arange(first, first + block) % pcm.size
            self.seg.push_audio(pcm[index], RATE, start + first / RATE)
            self.audio_samples += block

    def _collect(self) -> None:
        last = -1
        while not self.stop.is_set():
            result = self.seg.wait(after=last, timeout=0.5)
            if result is not None and result.index > last:
                last = result.index
                with self._lock:
                    self.latencies.append(result.latency)


def _sample(pipe: Pipeline, elapsed: float) -> dict:
    stats = dict(pipe.seg.stats)
    lat = pipe.take_latencies()
    p50, p95 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 95))) if lat else (None, None)
    return {"t": round(elapsed, 2), **proc_counts(), **stats, "loops": pipe.loops, "audio_samples": pipe.audio_samples,
            "backlog": stats["pushed"] - stats["segmented"] - stats["dropped"], "interval_results": len(lat),
            "p50": p50, "p95": p95}


def _fmt_lat(s: dict) -> str:
    return f"{s['p50']:.2f}/{s['p95']:.2f} s" if s["p50"] is not None else "-"


def _line(s: dict) -> str:
    return (f"{s['t']:7.0f} s  RSS {s['rss_mb']:7.1f} MB  threads {s['threads']:3d}  fds {s['fds']:3d}  "
            f"results {s['segmented']:6d}  dropped {s['dropped']:7d}  backlog {s['backlog']}  "
            f"loops {s['loops']:4d}  latency p50/p95 {_fmt_lat(s)}")


def verdict(samples: list[dict], before: dict, after: dict, errors: list[str], mode: str) -> list[dict]:
    """The pass/fail rules of the module docstring, each with its figures."""
    end = samples[-1]["t"]
    first = [s for s in samples if s["t"] <= MINUTE]
    last = [s for s in samples if s["t"] > max(MINUTE, end - MINUTE)]
    rules = []

    def rule(name: str, ok: bool, detail: str) -> None:
        rules.append({"rule": name, "ok": bool(ok), "detail": detail})

    base, top = max(s["rss_mb"] for s in first), max(s["rss_mb"] for s in last)
    growth = top / base - 1
    rule("rss", growth <= RSS_GROWTH, f"max RSS first minute {base:.1f} MB, last minute {top:.1f} MB: "
                                      f"{growth * 100:+.2f} % (limit +{RSS_GROWTH * 100:.0f} %)")
    for key in ("fds", "threads"):
        level, floor = max(s[key] for s in first), min(s[key] for s in last)
        rule(f"handles ({key})", floor <= level, f"{key}: most in the first minute {level}, "
                                                f"fewest in the last minute {floor}")
    rule("closed", after["fds"] <= before["fds"] and after["threads"] <= before["threads"],
         f"before opening: {before['fds']} fds, {before['threads']} threads; after closing: {after['fds']} fds, "
         f"{after['threads']} threads")
    idle = [s["t"] for s in samples[1:] if s["interval_results"] == 0]
    rule("live", not idle and not errors, "; ".join(errors) or
         (f"no result in the intervals ending at {', '.join(f'{t:.0f} s' for t in idle)}" if idle
          else "results in every interval"))
    worst = max(s["backlog"] for s in samples)
    rule("backlog", worst <= MAX_BACKLOG, f"largest pushed - segmented - dropped: {worst} (limit {MAX_BACKLOG})")
    if mode == "flood":
        pushed, done = samples[-1]["pushed"], samples[-1]["segmented"]
        rule("flood", pushed >= 2 * max(1, done), f"{pushed} frames pushed ({pushed / end:.0f}/s), {done} segmented, "
                                                  f"{samples[-1]['dropped']} dropped")
    return rules


def _summary(samples: list[dict]) -> str:
    end = samples[-1]["t"]
    groups = [("first minute", [s for s in samples if s["t"] <= MINUTE]),
              ("last minute", [s for s in samples if s["t"] > max(MINUTE, end - MINUTE)])]
    rows = [f"{'':24s}{'first minute':>16s}{'last minute':>16s}"]
    for label, key in (("RSS MB (min-max)", "rss_mb"), ("threads (min-max)", "threads"), ("fds (min-max)", "fds")):
        cells = [f"{min(s[key] for s in g):.0f}-{max(s[key] for s in g):.0f}" for _, g in groups]
        rows.append(f"{label:24s}{cells[0]:>16s}{cells[1]:>16s}")
    for label, key in (("results", "interval_results"),):
        cells = [str(sum(s[key] for s in g)) for _, g in groups]
        rows.append(f"{label:24s}{cells[0]:>16s}{cells[1]:>16s}")
    p95 = [f"{max((s['p95'] for s in g if s['p95'] is not None), default=float('nan')):.2f} s" for _, g in groups]
    rows.append(f"{'worst interval p95':24s}{p95[0]:>16s}{p95[1]:>16s}")
    return "\n".join(rows)


def _child(args: argparse.Namespace) -> int:
    from runtime.segmenter import Segmenter

    try:  # PortAudio stays loaded once imported: load it before the 'before' counts
        import sounddevice  # noqa: F401
    except OSError:
        pass

    # The first live frame leaves process-wide state (ONNX Runtime's telemetry database in HOME, a native thread
    # pool): segment one live frame with a first Segmenter and close it, so that 'closed' compares like with like.
    with Segmenter(args.model_dir, backend=args.backend, say=lambda line: None) as first:
        first.push_frame(np.zeros((360, 640, 3), np.uint8), time.monotonic())
        first.wait(timeout=120)
    del first
    gc.collect()
    before, before_handles = proc_counts(), proc_handles()
    seg = Segmenter(args.model_dir, backend=args.backend)
    print(f"soak: {args.mode} mode, {args.minutes:g} min, clip {args.clip}, warm-up took {seg.warmup():.1f} s",
          flush=True)
    pipe = Pipeline(seg, Path(args.clip), args.mode, Path(args.child_dir))
    print(f"soak: audio: {pipe.audio_source}", flush=True)
    samples: list[dict] = []
    t0 = time.monotonic()
    pipe.start()
    try:
        while True:
            due = t0 + (len(samples) + 1) * args.sample_every
            time.sleep(max(0.0, due - time.monotonic()))
            samples.append(_sample(pipe, time.monotonic() - t0))
            print(_line(samples[-1]), flush=True)
            if samples[-1]["t"] >= args.minutes * MINUTE - 1e-6 or pipe.errors:
                break
    finally:
        pipe.close()
        seg.close()
    audio_rate, errors, source = pipe.audio_samples / (time.monotonic() - t0), list(pipe.errors), pipe.audio_source
    del pipe, seg
    gc.collect()
    time.sleep(0.5)
    after, after_handles = proc_counts(), proc_handles()
    rules = verdict(samples, before, after, errors, args.mode)
    print("\n" + _summary(samples))
    print(f"audio delivered: {audio_rate:.0f} samples/s (real time: {RATE}); {source}")
    for r in rules:
        print(f"{'PASS' if r['ok'] else 'FAIL'}  {r['rule']:18s} {r['detail']}")
    failed = [r["rule"] for r in rules if not r["ok"]]
    if "closed" in failed:
        for key in ("threads", "python_threads", "fds"):
            extra = Counter(after_handles[key]) - Counter(before_handles[key])
            print(f"      left open ({key}): {', '.join(f'{n} x {x}' for x, n in extra.items()) or 'none'}")
    print(f"soak {'FAILED: ' + ', '.join(failed) if failed else 'passed'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "mode": args.mode, "minutes": args.minutes, "sample_every": args.sample_every, "clip": args.clip,
            "model_dir": str(args.model_dir), "audio_source": source, "audio_samples_per_s": audio_rate,
            "before": {**before, **{f"{k}_names": v for k, v in before_handles.items()}},
            "after": {**after, **{f"{k}_names": v for k, v in after_handles.items()}}, "samples": samples, "rules": rules, "passed": not failed}, indent=1))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="artifact directory (python -m export.build_engine)")
    parser.add_argument("--minutes", type=float, default=10.0, help="duration, at least 2 (default 10)")
    parser.add_argument("--mode", choices=("paced", "flood"), default="paced",
                        help="paced: the clip at its frame rate; flood: a frame every 5 ms (default paced)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--clip", help="video with an audio track to loop (default: a generated 10 s clip)")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime"))
    parser.add_argument("--json", help="write the samples and the verdict to this file")
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.minutes < 2:
        parser.error("--minutes must be at least 2 (the rules compare the first minute with the last)")
    if not 0 < args.sample_every <= 30:
        parser.error("--sample-every must be in (0, 30] seconds")
    return _child(args) if args.child_dir else _parent(args, argv)


if __name__ == "__main__":
    sys.exit(main())
