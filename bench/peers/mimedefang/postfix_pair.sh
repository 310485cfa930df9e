#!/bin/sh
# Copied unchanged (but for this line) from the project's shared/peers/mimedefang/ (outside the repo): the peer as it ran for issue 14's figures.
# Two private Postfix instances, both
# relaying everything to the sink on 127.0.0.1:10226:
#   plain: 127.0.0.1:10225 (smtpd) -> disk queue -> smtp -> 127.0.0.1:10226
#   md:    127.0.0.1:10227 (smtpd + milter MIMEDefang) -> disk queue -> smtp -> 127.0.0.1:10226
# Config and queues live under ${TMPDIR:-/tmp}/mdbench/postfix-{plain,md}; the
# system /etc/postfix is not touched and nothing listens on port 25.
# The md instance uses smtpd_milters = unix:${TMPDIR:-/tmp}/mdbench/md/mimedefang.sock
# (started by ./md_ctl.sh) and milter_default_action = tempfail.
# Usage: ./postfix_pair.sh start|stop|status|clean
set -eu
ROOT="${TMPDIR:-/tmp}/mdbench"
SINK=127.0.0.1:10226

write_config() {  # name port extra-main.cf-lines
    base="$ROOT/postfix-$1"
    conf="$base/etc"
    mkdir -p "$conf" "$base/spool" "$base/data"
    chown postfix "$base/data"
    cat > "$conf/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $conf
queue_directory = $base/spool
data_directory = $base/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-$1
myhostname = $1.bench.invalid
mydomain = bench.invalid
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_banner = \$myhostname ESMTP
# everything goes to the sink, no DNS
default_transport = smtp:[${SINK%:*}]:${SINK##*:}
relay_transport = smtp:[${SINK%:*}]:${SINK##*:}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
message_size_limit = 20480000
biff = no
maillog_file_prefixes = $base/data
maillog_file = $base/data/maillog
$3
EOF
    # chroot off; otherwise the stock Debian master.cf services
    cat > "$conf/master.cf" <<EOF
127.0.0.1:$2 inet n  -  n  -  -  smtpd
EOF
    cat >> "$conf/master.cf" <<'EOF'
pickup     unix  n  -  n  60  1  pickup
cleanup    unix  n  -  n  -   0  cleanup
qmgr       unix  n  -  n  300 1  qmgr
tlsmgr     unix  -  -  n  1000? 1 tlsmgr
rewrite    unix  -  -  n  -   -  trivial-rewrite
bounce     unix  -  -  n  -   0  bounce
defer      unix  -  -  n  -   0  bounce
trace      unix  -  -  n  -   0  bounce
verify     unix  -  -  n  -   1  verify
flush      unix  n  -  n  1000? 0 flush
proxymap   unix  -  -  n  -   -  proxymap
proxywrite unix  -  -  n  -   1  proxymap
smtp       unix  -  -  n  -   -  smtp
relay      unix  -  -  n  -   -  smtp
showq      unix  n  -  n  -   -  showq
error      unix  -  -  n  -   -  error
retry      unix  -  -  n  -   -  error
discard    unix  -  -  n  -   -  discard
anvil      unix  -  -  n  -   1  anvil
scache     unix  -  -  n  -   1  scache
postlog    unix-dgram n - n  -   1  postlogd
EOF
}

each() {  # run "postfix -c CONF $1" for both instances
    for name in plain md; do
        postfix -c "$ROOT/postfix-$name/etc" "$@" || true
    done
}

case "${1:-}" in
start)
    write_config plain 10225 ""
    write_config md 10227 "smtpd_milters = unix:$ROOT/md/mimedefang.sock
milter_default_action = tempfail"
    for name in plain md; do
        postfix -c "$ROOT/postfix-$name/etc" check
        postfix -c "$ROOT/postfix-$name/etc" start
    done
    ;;
stop)
    each stop
    ;;
status)
    each status
    ;;
clean)
    each stop 2>/dev/null
    rm -rf "$ROOT/postfix-plain" "$ROOT/postfix-md"
    ;;
*)
    echo "usage: $0 start|stop|status|clean" >&2
    exit 2
    ;;
esac
