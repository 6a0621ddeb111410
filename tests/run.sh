#!/usr/bin/env bash
# The test command of the README: installs what the tests need, then runs them all.
#   bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests start as real processes: the production MQTT broker, and
# PLINK 1.9 (the reference GWAS results) and PLINK 2 (writes .pgen/.vcf test filesets);
# iproute2's `ip netns` puts each participant of tests/test_multihost.py on a host of its own;
# headless chromium (tests/test_operator_page.py loads the operator page in it).
APT_PACKAGES=(mosquitto plink1.9 plink2 iproute2 chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

python -m pip install -q -e '.[test]'
exec python -m pytest "$@"
