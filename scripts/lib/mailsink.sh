# A local SMTP server (aiosmtpd from PyPI) that keeps every message it accepts as a
# file in a Maildir, for the demo and the tests. Sourced; needs lib/localstripe.sh.

AIOSMTPD_VERSION=1.4.6

install_mailsink() {
    venv_install aiosmtpd "aiosmtpd==$AIOSMTPD_VERSION"
}

# Starts the sink on a free port, keeping mail in $1 (a Maildir: one file per message
# in $1/new); sets MAILSINK_PID and MAILSINK_PORT.
start_mailsink() {
    install_mailsink
    mkdir -p "$1/tmp" "$1/new" "$1/cur"
    MAILSINK_PORT=$(free_port)
    .venv/bin/python -m aiosmtpd -n -l "127.0.0.1:$MAILSINK_PORT" -c aiosmtpd.handlers.Mailbox "$1" \
        >"$1/../mailsink.log" 2>&1 &
    MAILSINK_PID=$!
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$MAILSINK_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the mail sink did not start; see $1/../mailsink.log" >&2
    return 1
}
