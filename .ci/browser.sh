#!/usr/bin/env bash
# CI's browser, as root: Debian's headless Chromium and its WebDriver, for the tests that open the
# HTML reports (tests/browser.py). Installed once per machine; later runs find them.
set -euo pipefail
packages=(chromium chromium-driver fonts-dejavu-core)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
