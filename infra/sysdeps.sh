#!/usr/bin/env bash
# Install the Debian packages listed in infra/apt-packages.txt (one place for every apt package the tests and
# tools need). Idempotent and quick: only missing packages are installed, apt lists are refreshed only then.
# Not Debian or not root: says what is missing and exits 0 (the tests that need a package skip with a reason).
set -euo pipefail
LIST="$(dirname "${BASH_SOURCE[0]}")/apt-packages.txt"
mapfile -t wanted < <(grep -vE '^\s*(#|$)' "$LIST" | awk '{print $1}')
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if ! command -v apt-get >/dev/null || [[ $(id -u) -ne 0 ]]; then
  echo "note: system packages missing (${missing[*]}); install them with apt-get as root (infra/apt-packages.txt);" \
       "the tests that need them skip" >&2
  exit 0
fi
echo "==> apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
