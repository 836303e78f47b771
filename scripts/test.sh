#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (as root) and run it.
# Used by the README and by .ci/run. Idempotent: a second run only runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients and validators written by others: dcmtk (storescu, findscu...), dicom3tools (dciodvfy);
# iproute2 (ss) to see which process holds a connection; Chromium for the web face's browser tests
# (driven by Playwright with executable_path: Playwright's own browser download is not used);
# nginx as the reverse proxy of the public-URL tests; npm fetches OHIF for its browser tests;
# Orthanc (with its DICOMweb plugin) as the legacy PACS that migrations read from.
need=""
command -v npm >/dev/null || need="npm"
for pkg in dcmtk dicom3tools iproute2 chromium fonts-dejavu-core nginx-light orthanc orthanc-dicomweb; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need="$need $pkg"
done
if [ -n "$need" ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Debian's orthanc package starts its service on install; the tests start their own Orthanc.
  policy=""
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d; policy=1; }
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $need >/dev/null
  [ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import nubis, dicomweb_client' 

.venv/bin/ruff check src tests bench
# Types: mypy in its default mode over the package ([tool.mypy] in pyproject.toml).
.venv/bin/mypy src/nubis
# The slowest tests are listed at the end of every run: the suite must stay under 20 minutes.
exec .venv/bin/pytest -q --durations=25 "$@"
