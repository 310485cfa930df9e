#!/bin/sh
# Copied unchanged (but for this line) from the project's shared/peers/mimedefang/ (outside the repo): the peer as it ran for issue 14's figures.
# A private MIMEDefang (multiplexor + milter) for the benchmark, with the
# worker settings of the Debian package's init script (/etc/init.d/mimedefang:
# -U defang, embedded Perl -E, -m 2 minimum and -x 10 maximum workers,
# -b 600, no request queue, mimedefang -R -1), but its own spool, sockets,
# pid files and filter under ${TMPDIR:-/tmp}/mdbench/md:
#   md/mimedefang.sock   milter socket (Postfix: smtpd_milters = unix:...)
#   md/mx.sock           multiplexor socket
#   md/spool/            per-message work directories
#   md/parts/            doc root of action_replace_with_url (stored attachments)
#   md/mimedefang-filter copy of ./mimedefang-filter
# The Debian service is not used (its start was refused by policy-rc.d at install).
# Extra multiplexor/milter options can be passed in MX_OPTS / MD_OPTS.
# Usage: ./md_ctl.sh start|stop|status|clean
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT="${TMPDIR:-/tmp}/mdbench/md"
MX_OPTS=${MX_OPTS:-}
MD_OPTS=${MD_OPTS:-}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "${1:-}" in
start)
    mkdir -p "$ROOT/spool" "$ROOT/parts"
    cp "$HERE/mimedefang-filter" "$ROOT/mimedefang-filter"
    chown defang:defang "$ROOT" "$ROOT/spool" "$ROOT/parts"
    chmod 755 "$ROOT" "$ROOT/parts"
    chmod 750 "$ROOT/spool"
    perl -c "$ROOT/mimedefang-filter" >/dev/null 2>&1 || { perl -c "$ROOT/mimedefang-filter"; exit 1; }
    rm -f "$ROOT/mx.sock" "$ROOT/mimedefang.sock"
    # shellcheck disable=SC2086
    mimedefang-multiplexor -p "$ROOT/mx.pid" -o "$ROOT/mx.lock" -E -z "$ROOT/spool" \
        -F "$ROOT/mimedefang-filter" -m 2 -x 10 -b 600 -U defang -s "$ROOT/mx.sock" $MX_OPTS
    # shellcheck disable=SC2086
    mimedefang -P "$ROOT/md.pid" -o "$ROOT/md.lock" -R -1 -m "$ROOT/mx.sock" -z "$ROOT/spool" \
        -U defang -p "unix:$ROOT/mimedefang.sock" $MD_OPTS
    i=0
    while [ ! -S "$ROOT/mimedefang.sock" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    [ -S "$ROOT/mimedefang.sock" ] || { echo "mimedefang socket did not appear" >&2; exit 1; }
    # Postfix's smtpd (user postfix) must be able to connect
    chgrp postfix "$ROOT/mimedefang.sock"
    chmod 660 "$ROOT/mimedefang.sock"
    echo "multiplexor pid $(cat "$ROOT/mx.pid"), mimedefang pid $(cat "$ROOT/md.pid")"
    ;;
stop)
    for p in md mx; do
        if alive "$ROOT/$p.pid"; then
            pid=$(cat "$ROOT/$p.pid")
            kill "$pid"
            i=0
            while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        fi
        rm -f "$ROOT/$p.pid"
    done
    rm -f "$ROOT/mx.sock" "$ROOT/mimedefang.sock"
    ;;
status)
    for p in md mx; do
        if alive "$ROOT/$p.pid"; then echo "$p: running ($(cat "$ROOT/$p.pid"))"; else echo "$p: stopped"; fi
    done
    [ -S "$ROOT/mx.sock" ] && md-mx-ctrl -s "$ROOT/mx.sock" status || true
    ;;
clean)
    "$0" stop
    rm -rf "$ROOT"
    ;;
*)
    echo "usage: $0 start|stop|status|clean" >&2
    exit 2
    ;;
esac
