"""Bandit over the shipped code: every finding is fixed or listed, with its reason, in configs/bandit-baseline.yaml.

A new finding fails here naming file, line and rule; so does a baseline entry that no longer matches
(the code it excused is gone, so the excuse must go too). Dependency CVEs (pip-audit) need a
vulnerability service this CI cannot reach: scripts/audit.sh runs them where one is (docs/security.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

SCANNED = ("helios", "deployments", "scripts", "bench")
BASELINE = REPO_ROOT / "configs" / "bandit-baseline.yaml"


def _findings() -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "bandit", "-q", "-r", *SCANNED, "-f", "json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    # bandit exits 1 when it reports findings; anything else without JSON is a broken run.
    report = json.loads(proc.stdout) if proc.stdout.strip() else None
    assert report is not None and proc.returncode in (0, 1), f"bandit failed ({proc.returncode}): {proc.stderr[-2000:]}"
    assert not report["errors"], f"bandit could not scan: {report['errors']}"
    out = []
    for r in report["results"]:
        path = Path(r["filename"]).as_posix().removeprefix("./")
        text = (REPO_ROOT / path).read_text().splitlines()[r["line_number"] - 1].strip()
        out.append({"file": path, "test": r["test_id"], "line": text, "where": f"{path}:{r['line_number']}",
                    "issue": r["issue_text"], "severity": r["issue_severity"]})
    return out


def _matches(entry: dict, finding: dict) -> bool:
    return (entry["file"], entry["test"]) == (finding["file"], finding["test"]) and entry["line"] in ("ANY", finding["line"])


def test_every_bandit_finding_is_fixed_or_listed_with_a_reason():
    baseline = yaml.safe_load(BASELINE.read_text())["findings"]
    assert all(e.get("reason", "").strip() for e in baseline), "every baseline entry needs a reason"
    findings = _findings()
    new = [f for f in findings if not any(_matches(e, f) for e in baseline)]
    stale = [e for e in baseline if not any(_matches(e, f) for f in findings)]
    assert not new, "bandit findings that are neither fixed nor in configs/bandit-baseline.yaml:\n" + "\n".join(
        f"  {f['where']} {f['test']} ({f['severity']}): {f['issue']}\n    {f['line']}" for f in new)
    assert not stale, "configs/bandit-baseline.yaml entries that match no finding any more (remove them):\n" + "\n".join(
        f"  {e['file']} {e['test']}: {e['line']}" for e in stale)
