# localstripe (PyPI), the Stripe emulator the tests and the local demo talk to.
# Sourced; expects to run from the project root.

LOCALSTRIPE_VERSION=1.15.10
LOCALSTRIPE_KEY=sk_test_rsolv_local

# Installs a PyPI package into the project's .venv unless its module imports already.
venv_install() { # module requirement
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv >&2
    fi
    if ! .venv/bin/python -c "import $1" 2>/dev/null; then
        echo "==> installing $2 into .venv" >&2
        .venv/bin/pip install -q --disable-pip-version-check "$2" >&2
    fi
}

install_localstripe() {
    venv_install localstripe "localstripe==$LOCALSTRIPE_VERSION"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts localstripe on a free port (extra args go to localstripe, e.g. --from-scratch);
# sets LOCALSTRIPE_PID and LOCALSTRIPE_URL.
start_localstripe() {
    install_localstripe
    mkdir -p .data
    local port
    port=$(free_port)
    .venv/bin/localstripe --port "$port" "$@" >.data/localstripe.log 2>&1 &
    LOCALSTRIPE_PID=$!
    LOCALSTRIPE_URL="http://127.0.0.1:$port/"
    for _ in $(seq 1 100); do
        curl -fsS -u "$LOCALSTRIPE_KEY:" "${LOCALSTRIPE_URL}v1/customers?limit=1" >/dev/null 2>&1 && return 0
        kill -0 "$LOCALSTRIPE_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "localstripe did not start; see .data/localstripe.log" >&2
    return 1
}

# The Pro price as a plan (localstripe knows plans, not prices). Idempotent.
create_pro_plan() { # url price_id amount_cents currency
    curl -fsS -u "$LOCALSTRIPE_KEY:" "${1}v1/plans/$2" >/dev/null 2>&1 && return 0
    curl -fsS -u "$LOCALSTRIPE_KEY:" "${1}v1/plans" -d id="$2" -d amount="$3" -d currency="$4" \
        -d interval=month -d "product[name]=RSOLV Pro" >/dev/null
}

# Asks localstripe to deliver its events to our webhook endpoint, signed with the secret.
forward_webhooks() { # url endpoint secret
    curl -fsS -u "$LOCALSTRIPE_KEY:" "${1}_config/webhooks/rsolv" -d url="$2" -d secret="$3" >/dev/null
}
