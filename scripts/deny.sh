#!/usr/bin/env bash
# cargo-deny over the locked tree (deny.toml): licenses, bans (duplicate
# majors included) and sources, always. Advisories need the RustSec
# database, which is fetched from GitHub — not reachable where this project
# builds — so they are checked only when a copy is already on the machine,
# and cargo-deny is never allowed to fetch it (--disable-fetch): a network
# failure must not fail CI.
set -euo pipefail
cd "$(dirname "$0")/.."
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if compgen -G "$db_root/*/crates" >/dev/null; then
  cargo deny --locked check --disable-fetch
else
  echo "cargo-deny: no RustSec advisory database under $db_root; advisories NOT checked (licenses, bans, sources are)" >&2
  cargo deny --locked check --disable-fetch licenses bans sources
fi
