"""Video in the page (H.264 through MSE, LL-HLS through the vendored hls.js) and the JS SDK, in headless Chromium."""

from __future__ import annotations

import json

import pytest

from helios.client import HeliosClient

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TIMEOUT_MS = 90_000
# Predicates are functions ("() => ..."): a bare expression is polled with eval(), which the
# page's CSP (no 'unsafe-eval') refuses.
LONG_PROMPT = "W" * 60  # three full lines of text over the top of the test pattern
# Mean colour saturation of the first text line's band (x 12..90, y 3..10 of the 96x64 test
# pattern) of the frame on screen: high over colour bars, ~0 over a line of text.
BAND_SATURATION = """() => {
  const v = document.querySelector('#mse-video');
  if (!v || v.readyState < 2) return null;
  const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d'); g.drawImage(v, 0, 0);
  const px = g.getImageData(12, 3, 78, 8).data;
  let sum = 0;
  for (let i = 0; i < px.length; i += 4) sum += Math.max(px[i], px[i+1], px[i+2]) - Math.min(px[i], px[i+1], px[i+2]);
  return sum / (px.length / 4);
}"""


@pytest.fixture
def session(helios_server):
    with HeliosClient(helios_server.url, helios_server.api_key) as client:
        s = client.create_session("test-pattern")
        s.set_prompt("x")
        s.start()
        yield s
        s.delete()


def test_chromium_has_h264_mse(page, helios_server):
    page.goto(helios_server.url + "/")
    assert page.evaluate("""MediaSource.isTypeSupported('video/mp4; codecs="avc1.64001f"')""")


def test_player_plays_h264_through_mse_and_a_prompt_change_reaches_the_screen(page, helios_server, session, test_output_dir):
    page.goto(f"{helios_server.url}/?session={session.id}&token={session.viewer_token}")
    page.wait_for_function("() => window.heliosApp.format === 'mp4' && document.querySelector('#mse-video').currentTime > 0.5",
                           timeout=TIMEOUT_MS)
    assert page.is_hidden("#video")  # the MJPEG <img> stays the fallback only
    t0 = page.evaluate("document.querySelector('#mse-video').currentTime")
    frames0 = page.evaluate("window.heliosApp.player.frames")
    page.wait_for_function(f"() => document.querySelector('#mse-video').currentTime > {t0 + 1.0}", timeout=TIMEOUT_MS)
    page.wait_for_function(f"() => window.heliosApp.player.frames > {frames0 + 12}", timeout=TIMEOUT_MS)
    # Live latency (generation end -> on screen, from the stream's prft boxes) and bitrate are shown.
    page.wait_for_function("() => window.heliosApp.player.latencyMs !== null && window.heliosApp.player.bitrate > 0", timeout=TIMEOUT_MS)
    assert page.inner_text("#latency").endswith(" ms") and "kbit/s" in page.inner_text("#bitrate")
    latency_ms = page.evaluate("window.heliosApp.player.latencyMs")
    assert 0 < latency_ms < 30_000, latency_ms
    # Over colour bars the band is saturated; the long prompt covers it with text once it is on screen.
    page.wait_for_function(f"() => ({BAND_SATURATION})() > 60", timeout=TIMEOUT_MS)
    session.set_prompt(LONG_PROMPT)
    page.wait_for_function(f"() => ({BAND_SATURATION})() < 30", timeout=TIMEOUT_MS)
    page.locator(".video-wrap").screenshot(path=str(test_output_dir / "web-mse-prompt.png"))
    errors = [m for m in page.console_log if m.startswith("pageerror")]
    assert not errors, errors


def test_player_plays_ll_hls_with_the_vendored_hls_js(page, helios_server, session, test_output_dir):
    scripts: list[str] = []
    page.on("request", lambda r: scripts.append(r.url) if r.resource_type == "script" else None)
    page.goto(f"{helios_server.url}/?session={session.id}&token={session.viewer_token}")
    page.wait_for_function("() => window.heliosApp.format === 'mp4'", timeout=TIMEOUT_MS)
    page.select_option("#video-format", "hls")
    page.wait_for_function("() => window.heliosApp.format === 'hls' && document.querySelector('#mse-video').currentTime > 2",
                           timeout=TIMEOUT_MS)
    assert page.evaluate("window.heliosApp.player.engine") == "hls.js 1.7.4"
    assert all(u.startswith(helios_server.url) for u in scripts), scripts  # no CDN
    page.wait_for_function("() => window.heliosApp.player.latencyMs !== null", timeout=TIMEOUT_MS)
    t0 = page.evaluate("document.querySelector('#mse-video').currentTime")
    page.wait_for_function(f"() => document.querySelector('#mse-video').currentTime > {t0 + 1.5}", timeout=TIMEOUT_MS)
    latency_ms = page.evaluate("window.heliosApp.player.latencyMs")
    assert 0 < latency_ms < 30_000, latency_ms
    (test_output_dir / "hls-latency.json").write_text(json.dumps({"hls_glass_to_glass_ms": latency_ms}))


SDK = """async ([url, apiKey]) => {
  const { connect } = await import('/static/helios.js');
  const s = connect(url, { apiKey });
  window.sdk = s;
  window.sdkMessages = [];
  s.on('message', (m) => window.sdkMessages.push(m));
  const ok = await s.sendCommand('set_prompt', { prompt: 'from the sdk' });
  const refused = await s.sendCommand('schedule_prompt', { prompt: 'past', chunk: 0 });
  let viewerError = null;
  try { await connect(url, { viewerToken: 'x', messages: false }).sendCommand('start'); } catch (e) { viewerError = e.message; }
  return { ok, refused, viewerError };
}"""


def test_sdk_commands_messages_and_resume(page, helios_server, session):
    page.goto(helios_server.url + "/")
    out = page.evaluate(SDK, [f"{helios_server.url}/v1/sessions/{session.id}", helios_server.api_key])
    assert out["ok"]["ok"] is True and out["ok"]["id"].startswith("js-")
    assert out["refused"]["ok"] is False and out["refused"]["error"]  # a refusal resolves to its ack
    assert "read-only" in out["viewerError"]
    page.wait_for_function("() => window.sdkMessages.some(m => m.type === 'state' && m.data.current_prompt === 'from the sdk')",
                           timeout=TIMEOUT_MS)
    # Drop the message stream: the SDK reconnects after its last seq, losing and repeating nothing.
    page.wait_for_function("() => window.sdkMessages.filter(m => m.data.event === 'chunk_complete').length >= 1", timeout=TIMEOUT_MS)
    page.evaluate("window.sdk._abort.abort()")
    page.wait_for_function("() => window.sdkMessages.filter(m => m.data.event === 'chunk_complete').length >= 3", timeout=TIMEOUT_MS)
    got = page.evaluate("window.sdkMessages")
    chunks = [m["data"]["chunk"] for m in got if m["data"].get("event") == "chunk_complete"]
    assert chunks == sorted(set(chunks)) and chunks == list(range(chunks[0], chunks[0] + len(chunks))), chunks
    # The same message objects as the Python client ({type, data, seq}), seq for seq.
    python = {}
    for msg in session.messages(after=-1, timeout=60):
        python[msg.seq] = msg.model_dump()
        if msg.event == "chunk_complete" and msg.data["chunk"] >= chunks[-1]:
            break
    shared = [m for m in got if m["seq"] in python]
    assert len(shared) >= 5
    assert all(m == python[m["seq"]] for m in shared), [(m, python[m["seq"]]) for m in shared if m != python[m["seq"]]][:2]
