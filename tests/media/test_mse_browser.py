"""Headless Chromium plays a late joiner's fragmented MP4 through MSE with no timestampOffset or seek."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from helios.media import mp4box
from helios.media.mp4 import Mp4Timeline
from tests.media.conftest import FPS, N, W

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser

PLAY = """
async ([codec, pieces]) => {
  if (!window.MediaSource || !MediaSource.isTypeSupported(codec)) return {supported: false};
  const video = document.querySelector('video');
  const ms = new MediaSource();
  video.src = URL.createObjectURL(ms);
  await new Promise(r => ms.addEventListener('sourceopen', r, {once: true}));
  const sb = ms.addSourceBuffer(codec);
  for (const b64 of pieces) {  // one appendBuffer per relay piece, as a live player does
    sb.appendBuffer(Uint8Array.from(atob(b64), c => c.charCodeAt(0)));
    await new Promise((ok, bad) => {
      sb.addEventListener('updateend', ok, {once: true});
      sb.addEventListener('error', () => bad(new Error('append failed')), {once: true});
    });
  }
  const ranges = [];
  for (let i = 0; i < sb.buffered.length; i++) ranges.push([sb.buffered.start(i), sb.buffered.end(i)]);
  ms.endOfStream();
  const ended = new Promise(r => video.addEventListener('ended', r, {once: true}));
  await video.play();
  await ended;
  return {supported: true, ranges, currentTime: video.currentTime, width: video.videoWidth,
          frames: video.getVideoPlaybackQuality().totalVideoFrames};
}
"""


@pytest.fixture(scope="module")
def chromium_page():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--headless=new", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
        )
        page = browser.new_page()
        page.set_content("<video muted playsinline></video>")
        yield page
        browser.close()


def test_late_joiner_with_a_skipped_chunk_plays_from_zero(encoded_session, chromium_page):
    enc, _, chunks = encoded_session
    timeline = Mp4Timeline()
    # Joins at chunk 1, then chunk 2 is skipped (a slow viewer), then chunk 3.
    pieces = [enc.init_segment + timeline.render(chunks[1]), timeline.render(chunks[3])]
    codec = f'video/mp4; codecs="{mp4box.codec_string(enc.init_segment)}"'
    result = chromium_page.evaluate(PLAY, [codec, [base64.b64encode(p).decode() for p in pieces]])
    if not result["supported"]:
        pytest.skip(f"this Chromium has no H.264 MSE ({codec})")
    assert len(result["ranges"]) == 1, result  # one buffered range: no gap
    start, end = result["ranges"][0]
    assert start == pytest.approx(0.0, abs=1e-3)
    assert end == pytest.approx(2 * N / FPS, abs=0.05)
    assert result["currentTime"] == pytest.approx(end, abs=0.05)  # played to the end without a seek
    assert result["width"] == W
