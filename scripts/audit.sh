#!/usr/bin/env bash
# Dependency CVEs: pip-audit over every package installed in .venv, against PyPI's vulnerability data.
# Needs a vulnerability service (PyPI's JSON API, or OSV with `-s osv`); it fails loudly when none
# answers. Known findings we accept sit, one ID and its reason a line, in configs/pip-audit-ignore.txt.
# Usage: scripts/audit.sh [extra pip-audit options]   (docs/security.md)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test >/dev/null
. .venv/bin/activate
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
# Local version labels (torch's "+cpu") name no PyPI release: audit the release they were built from.
# The project itself (editable) is not on PyPI either.
python -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$//' >"$reqs"
ignores=()
while read -r id _reason; do
  [ -n "$id" ] && [ "${id:0:1}" != "#" ] && ignores+=(--ignore-vuln "$id")
done < configs/pip-audit-ignore.txt
python -m pip_audit --strict --progress-spinner off --no-deps --disable-pip -r "$reqs" ${ignores[@]+"${ignores[@]}"} "$@"
