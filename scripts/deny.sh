#!/usr/bin/env bash
# cargo-deny over the locked tree (deny.toml): licenses, bans (duplicate
# majors included) and sources, always. Advisories need the RustSec
# database, which is fetched from GitHub — not reachable where this project
# builds — so they are checked only when a copy is already on the machine.
# cargo-deny itself runs --offline, so it never tries to fetch anything and
# a network failure cannot fail CI; the crates it reads (every platform's,
# for their licenses) come from crates.io first through cargo fetch.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch --locked --quiet
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if compgen -G "$db_root/*/crates" >/dev/null; then
  cargo deny --offline --locked check
else
  echo "cargo-deny: no RustSec advisory database under $db_root; advisories NOT checked (licenses, bans, sources are)" >&2
  cargo deny --offline --locked check licenses bans sources
fi
