"""The library API recovers: a bad push raises to the caller and leaves the Segmenter usable, reset() clears any
error, and every method raises SegmenterClosed after close() (a real artifact through ONNX Runtime)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.segmenter import Segmenter, SegmenterClosed

IMAGE = np.full((48, 64, 3), 90, np.uint8)


@pytest.fixture
def seg(artifact):
    with Segmenter(artifact, "onnxruntime", audio=False, say=lambda line: None) as segmenter:
        yield segmenter


def test_a_backwards_timestamp_raises_and_the_stream_goes_on(seg):
    seg.push_frame(IMAGE, 5.0)
    first = seg.wait(timeout=120)
    with pytest.raises(ValueError, match="before the previous frame"):
        seg.push_frame(IMAGE, 4.0)
    seg.push_frame(IMAGE, 6.0)                                   # the same stream goes on
    second = seg.wait(after=first.index, timeout=120)
    assert second is not None and second.timestamp == 6.0
    assert seg.latest() is second


def test_reset_starts_a_new_stream_at_any_time(seg):
    seg.push_frame(IMAGE, 100.0)
    first = seg.wait(timeout=120)
    seg.reset()
    assert seg.latest() is None
    seg.push_frame(IMAGE, 1.0)                                   # earlier than before the reset: a new stream
    result = seg.wait(timeout=120)
    assert result is not None and result.timestamp == 1.0 and result.index == 0 == first.index


def test_a_failed_frame_is_reported_until_reset(seg):
    seg.push_frame(IMAGE, 1.0)
    seg.wait(timeout=120)
    seg._live.history.add(2.0, {})          # corrupt the stream's cache: the next frame fails in the worker
    seg.push_frame(IMAGE, 1.5)
    with pytest.raises(RuntimeError, match="segmenting a pushed frame failed.*call reset"):
        seg.wait(after=10**6, timeout=120)
    with pytest.raises(RuntimeError, match="segmenting a pushed frame failed"):
        seg.latest()
    seg.reset()
    assert seg.latest() is None                                  # the error is gone with the stream
    seg.push_frame(IMAGE, 3.0)
    assert seg.wait(timeout=120).timestamp == 3.0


@pytest.mark.parametrize("call", [
    lambda s: s.push_frame(IMAGE, 1.0),
    lambda s: s.push_audio(np.zeros(160, np.float32), 16000, 0.0),
    lambda s: s.latest(),
    lambda s: s.wait(timeout=0.01),
    lambda s: s.segment(IMAGE, 1.0),
    lambda s: s.segment_clip([IMAGE], np.zeros(16000, np.float32), 16000),
    lambda s: s.reset(),
    lambda s: s.audio_level(),
    lambda s: s.audio_until(),
    lambda s: s.warmup(),
])
def test_every_method_raises_after_close(artifact, call):
    seg = Segmenter(artifact, "onnxruntime", audio=False, say=lambda line: None)
    seg.close()
    seg.close()                                                  # closing twice is harmless
    with pytest.raises(SegmenterClosed, match="closed Segmenter"):
        call(seg)
