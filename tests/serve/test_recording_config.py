"""`recording_uri` in the serving config: a bad URL or protocol is a config error at start-up naming it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.config import ServingConfig


def _config(**extra) -> ServingConfig:
    return ServingConfig.model_validate({"models": {"tp": {"kind": "test-pattern"}}, **extra})


@pytest.mark.parametrize(
    ("uri", "why"),
    [("nope://bucket/recordings", "Protocol not known"), ("memory://recordings", "one process only"),
     ("https://example.com/r", "read-only"), ("", "empty")],
)
def test_a_bad_recording_uri_is_a_config_error_naming_it(uri, why):
    with pytest.raises(ValidationError) as info:
        _config(recording_uri=uri)
    assert "recording_uri" in str(info.value) and why in str(info.value)


def test_recording_uri_is_set_at_the_top_level_only(tmp_path):
    with pytest.raises(ValidationError, match="relay.args.recording_uri: set recording_uri at the top level"):
        _config(relay={"args": {"recording_uri": str(tmp_path)}})
    assert _config(recording_uri=f"file://{tmp_path}").recording_uri == f"file://{tmp_path}"
    assert _config().recording_uri.endswith("helios-recordings")  # the default: a local folder
