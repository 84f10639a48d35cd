"""The README's `readme-test` code blocks, run against the real app so they cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```(\w+) readme-test\n(.*?)^```", re.S | re.M)


def readme_blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text()) if kind == lang]


def test_readme_has_the_two_commands_first_and_tested_examples():
    text = README.read_text()
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("scripts/serve.sh")
    assert first_block.splitlines()[1].startswith("scripts/test.sh")
    assert len(readme_blocks("bash")) == 1 and len(readme_blocks("python")) == 1


def _env(helios_server) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HELIOS_URL=helios_server.url, HELIOS_API_KEY=helios_server.api_key)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def test_readme_curl_example(helios_server, tmp_path):
    (script,) = readme_blocks("bash")
    # -e like a careful user's shell; no pipefail: `grep -m1` closing the SSE pipe is the point.
    out = subprocess.run(["bash", "-eu", "-c", script], cwd=tmp_path, env=_env(helios_server),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.count('"ok":true') == 3
    assert "chunk_complete" in out.stdout
    assert '"status":"ended"' in out.stdout.replace(" ", "")


def test_readme_python_example(helios_server, tmp_path):
    (script,) = readme_blocks("python")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(helios_server),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "99 frames; chunk 2 used: the fox dives into a river" in out.stdout
    assert (tmp_path / "fox.mp4").stat().st_size > 0
