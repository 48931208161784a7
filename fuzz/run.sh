#!/bin/sh
# Run one libFuzzer target for a time budget, seeded from the stable
# fuzzer's committed corpus (crates/fuzz/corpus), at the lowest priority:
#
#     fuzz/run.sh TARGET SECONDS
#
# New inputs libFuzzer finds go to fuzz/corpus/TARGET (not committed), a
# crash to fuzz/artifacts/TARGET/, the log to fuzz/logs/TARGET-<time>.log.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); RUSTC_BOOTSTRAP=1
# lets stable rustc take the nightly -Z flags cargo-fuzz passes.
set -eu
target=${1:?usage: fuzz/run.sh TARGET SECONDS}
secs=${2:?usage: fuzz/run.sh TARGET SECONDS}
here=$(cd "$(dirname "$0")" && pwd)
seeds=$here/../crates/fuzz/corpus
case $target in
image_json) dirs="$seeds/spec_json" max=65536 ;;
refs_filters) dirs="$seeds/reference $seeds/filter" max=4096 ;;
layer_apply) dirs="$seeds/tar_apply" max=65536 ;;
archive_import) dirs="$seeds/archive_import" max=262144 ;;
configs) dirs="$seeds/daemon_config $seeds/hosts_toml" max=16384 ;;
*) echo "unknown target $target" >&2; exit 2 ;;
esac
command -v cargo-fuzz >/dev/null || {
	echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
	exit 1
}
mkdir -p "$here/corpus/$target" "$here/artifacts/$target" "$here/logs"
log=$here/logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log
echo "fuzz $target for $secs s, log $log"
cd "$here"
# shellcheck disable=SC2086 # $dirs is a list
RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run -s none -a --codegen-units 16 \
	"$target" "$here/corpus/$target" $dirs -- \
	-max_total_time="$secs" -max_len="$max" -timeout=20 -rss_limit_mb=2048 \
	-print_final_stats=1 -artifact_prefix="$here/artifacts/$target/" \
	>"$log" 2>&1
