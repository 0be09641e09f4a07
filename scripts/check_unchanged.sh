#!/usr/bin/env bash
# check_unchanged.sh NAME "PATHS" "COMMAND": run COMMAND and fail if it changed or added any file under PATHS.
set -euo pipefail
name=$1; paths=$2; cmd=$3
snap() { find $paths -type f ! -path '*/__pycache__/*' ! -path '*/.ipynb_checkpoints/*' -print0 2>/dev/null | sort -z | xargs -0 sha1sum; }
before=$(snap)
bash -c "$cmd" >/dev/null
after=$(snap)
if [[ "$before" != "$after" ]]; then
  echo "FAILED $name: these files changed or appeared:"
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print "  " $3}' | sort -u
  echo "Run the command, review the result and commit it."
  exit 1
fi
echo "ok: $name"
