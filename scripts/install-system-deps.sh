#!/usr/bin/env bash
# Debian packages Meridian needs: bubblewrap (contract sandbox) and util-linux's setpriv.
# Runs apt-get when root (or via sudo when available); otherwise says what is missing.
set -euo pipefail
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: missing ${missing[*]} and no apt-get; contracts will run without bubblewrap" >&2
  exit 0
fi
run=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then run=(sudo -n); else
    echo "warning: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
  "${run[@]}" apt-get update -q >/dev/null
  "${run[@]}" apt-get install -y -q "${missing[@]}" >/dev/null
}
