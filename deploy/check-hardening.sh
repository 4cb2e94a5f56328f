#!/usr/bin/env bash
# Runs cchat (as root, for a few seconds) the way the unit's hardening would:
# a mount namespace whose root is read-only but for the state directory
# (ProtectSystem=strict + StateDirectory), a private /tmp (PrivateTmp), no
# new privileges, no capabilities, an unprivileged user (DynamicUser). It
# checks that glommio's io_uring, the listener and the message log work
# there. What it cannot show: SystemCallFilter and the other seccomp-based
# settings, which need systemd itself.
#   deploy/check-hardening.sh [path/to/cchat]
set -euo pipefail
bin=$(readlink -f "${1:-target/release/cchat}")
state=$(mktemp -d /var/tmp/cchat-hardening.XXXXXX)
chown 65534:65534 "$state"
out=$(mktemp)
trap 'rm -rf "$state" "$out"' EXIT
# The binary goes where the sandbox can see it (/tmp is private in there).
cp "$bin" "$state/.cchat" && chmod 755 "$state/.cchat" && bin="$state/.cchat"
timeout 3 unshare -m sh -c '
  set -e
  mount --make-rprivate /
  mount --bind "$1" "$1"
  mount -o remount,bind,ro /
  mount -o remount,bind,rw "$1"
  mount -t tmpfs tmpfs /tmp
  if touch /usr/.cchat-rw-probe 2>/dev/null; then echo "the root is still writable" >&2; exit 3; fi
  exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all --reuid=65534 --regid=65534 --clear-groups \
    "$2" --listen 127.0.0.1:0 --data-dir "$1" --shards 2
' sh "$state" "$bin" > "$out" || true
if grep -q '^listening on ' "$out" && [ -f "$state/state" ] && [ -d "$state/shard-0" ]; then
  echo "ok: cchat listened and opened its log under the hardening"
else
  echo "FAILED: cchat did not start under the hardening" >&2
  exit 1
fi
