#!/usr/bin/env bash
# Runs a command with an X display: the current one, or a virtual Xvfb screen when there is none.
set -euo pipefail
if [ -n "${DISPLAY:-}" ] || ! command -v xvfb-run >/dev/null 2>&1; then
  exec "$@"
fi
exec xvfb-run -a -s "-screen 0 1600x1200x24 +extension GLX +render -noreset" "$@"
