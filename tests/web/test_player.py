"""The browser player in headless Chromium against the real app: create, play, steer, share."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helios.client import HeliosAuthError, HeliosClient

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TIMEOUT_MS = 60_000
# Predicates are written as functions ("() => ..."): Playwright polls a bare expression with
# eval(), which the page's CSP (script-src 'self', no 'unsafe-eval') rightly refuses.


def _frames_drawn(page) -> int:
    return int(page.inner_text("#frames-drawn"))


def _wait_more_frames(page, than: int) -> None:
    page.wait_for_function(f"() => window.heliosApp.framesDrawn > {than}", timeout=TIMEOUT_MS)


def test_player_creates_plays_and_steers_a_session(page, helios_server, test_output_dir):
    page.goto(helios_server.url + "/")
    assert page.title().startswith("Helios Serve")
    page.wait_for_selector("#model option[value='test-pattern']", state="attached", timeout=TIMEOUT_MS)

    # Create a session with the API key and the test-pattern model.
    page.fill("#api-key", helios_server.api_key)
    page.select_option("#model", "test-pattern")
    page.click("#create")
    page.wait_for_function("() => window.heliosApp.sessionId !== null && !document.querySelector('#start').disabled",
                           timeout=TIMEOUT_MS)
    session_id = page.evaluate("window.heliosApp.sessionId")
    # The key stays in page memory: nothing stored without "remember in this tab".
    assert page.evaluate("[localStorage.length, sessionStorage.length]") == [0, 0]
    share_link = page.input_value("#share-link")
    assert session_id in share_link and "token=" in share_link

    # Start with a typed prompt: frames play (the drawn pixels change) and the timeline fills.
    page.fill("#prompt", "a glowing jellyfish")
    page.click("#start")
    page.wait_for_selector("#timeline tbody tr", timeout=TIMEOUT_MS)
    _wait_more_frames(page, 2)
    shot1 = page.locator(".video-wrap").screenshot()
    _wait_more_frames(page, _frames_drawn(page))
    shot2 = page.locator(".video-wrap").screenshot()
    assert shot1 != shot2, "the video element shows the same pixels"
    first_row = page.inner_text("#timeline tbody tr:last-child")
    assert "a glowing jellyfish" in first_row

    # A prompt typed in the page reaches the session.
    page.fill("#prompt", "a paper boat on a lake")
    page.click("#set-prompt")
    page.wait_for_function(
        "() => document.querySelector('#state dd[data-field=current_prompt]')?.textContent === 'a paper boat on a lake'",
        timeout=TIMEOUT_MS)
    with HeliosClient(helios_server.url, helios_server.api_key) as client:
        state = client.session(session_id).get_state()
    assert state["current_prompt"] == "a paper boat on a lake"

    # A bad image is refused with a visible error; a good one is compressed and accepted.
    page.set_input_files("#image", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}])
    page.wait_for_function("() => document.querySelector('#errors').textContent.includes('not a decodable image')",
                           timeout=TIMEOUT_MS)
    assert "notes.png" in page.inner_text("#errors")
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (900, 1400, 3), dtype=np.uint8)).save(buf, format="PNG")
    assert len(buf.getvalue()) > 64 * 1024  # the page must compress it under the limit itself
    page.set_input_files("#image", files=[{"name": "noise.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function("() => document.querySelector('#log').textContent.includes('image set')", timeout=TIMEOUT_MS)
    info = page.inner_text("#image-info")  # e.g. "noise.png: 96×64 JPEG q=0.92, 12.3 KB"
    assert float(info.split(", ")[-1].split(" KB")[0]) <= 64
    width, height = page.evaluate("[window.heliosApp.videoSize().width, window.heliosApp.videoSize().height]")
    assert f"{width}×{height}" in info  # resized to the stream's resolution in the browser

    page.screenshot(path=str(test_output_dir / "web-player.png"), full_page=True)

    # The share link opens a read-only player that plays the same session.
    viewer = page.context.new_page()
    viewer.goto(share_link)
    viewer.wait_for_function("() => window.heliosApp.framesDrawn > 1", timeout=TIMEOUT_MS)
    assert not viewer.locator("#controls").is_visible()
    assert not viewer.locator("#setup").is_visible()
    viewer.wait_for_selector("#timeline tbody tr", timeout=TIMEOUT_MS)
    viewer.screenshot(path=str(test_output_dir / "web-viewer.png"), full_page=True)

    # "New link" revokes the shared token: the old link is refused, the owner's page keeps playing.
    page.click("#rotate-share")
    page.wait_for_function(f"() => document.querySelector('#share-link').value !== {share_link!r}", timeout=TIMEOUT_MS)
    new_link = page.input_value("#share-link")
    old_token, new_token = share_link.split("token=")[1], new_link.split("token=")[1]
    assert new_token != old_token and page.evaluate("window.heliosApp.viewerToken") == new_token
    with HeliosClient(helios_server.url, api_key="") as anonymous:
        assert anonymous.get_session(session_id, token=new_token).status == "active"
        with pytest.raises(HeliosAuthError):
            anonymous.get_session(session_id, token=old_token)
    _wait_more_frames(page, _frames_drawn(page))  # its own streams reopened with the new token

    # Ending the session is shown in both pages.
    page.click("#end")
    page.wait_for_function("() => document.querySelector('#conn').dataset.state === 'ended'", timeout=TIMEOUT_MS)
    viewer.wait_for_function("() => document.querySelector('#conn').dataset.state === 'ended'", timeout=TIMEOUT_MS)
    errors = [m for m in page.console_log if m.startswith("pageerror")]
    assert not errors, errors


def test_player_reports_a_wrong_api_key(page, helios_server):
    page.goto(helios_server.url + "/")
    page.fill("#api-key", "wrong-key")
    page.click("#create")
    page.wait_for_function("() => document.querySelector('#errors').textContent.includes('create session')",
                           timeout=TIMEOUT_MS)
    assert not page.evaluate("window.heliosApp.sessionId")
    assert page.is_enabled("#create")


def test_player_keeps_the_api_key_in_memory_unless_remembered_for_the_tab(page, helios_server):
    page.goto(helios_server.url + "/")
    page.evaluate("localStorage.setItem('helios.apiKey', 'left-by-an-old-version')")
    page.reload()
    assert page.evaluate("localStorage.getItem('helios.apiKey')") is None  # an old stored key is wiped
    assert page.input_value("#api-key") == "" and not page.is_checked("#remember-key")

    page.fill("#api-key", helios_server.api_key)
    page.dispatch_event("#api-key", "change")
    assert page.evaluate("[localStorage.length, sessionStorage.length]") == [0, 0]
    page.reload()
    assert page.input_value("#api-key") == ""  # memory only: a reload forgets it

    page.fill("#api-key", helios_server.api_key)
    page.check("#remember-key")
    assert page.evaluate("sessionStorage.getItem('helios.apiKey')") == helios_server.api_key
    assert page.evaluate("localStorage.length") == 0
    page.reload()
    assert page.input_value("#api-key") == helios_server.api_key and page.is_checked("#remember-key")
    page.wait_for_selector("#model option[value='test-pattern']", state="attached", timeout=TIMEOUT_MS)

    page.uncheck("#remember-key")
    assert page.evaluate("sessionStorage.length") == 0
    page.goto(helios_server.url + "/?key=" + helios_server.api_key)
    assert page.input_value("#api-key") == ""  # never read from the URL
