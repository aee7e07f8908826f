#!/usr/bin/env bash
# Download benchmark: ferry against curl and aria2c over loopback.
#
#   bash bench/download.sh
#
# Environment (all optional):
#   SIZE            bytes to download                      (default 1073741824 = 1 GiB)
#   RUNS            runs per tool, plain + testserver      (default 5)
#   RUNS_THROTTLED  runs per tool, throttled variant       (default 3)
#   RATE            nginx per-connection limit_rate        (default 20m; nginx units, m = MiB/s)
#   VARIANTS        which variants, in order               (default "plain throttled testserver")
#   WORKDIR         scratch folder; must not be tmpfs      (default: mktemp -d under /var/tmp)
#   KEEP_WORKDIR=1  keep the scratch folder at the end
#
# Variants:
#   plain       nginx (sendfile) on 127.0.0.1, no limit
#   throttled   the same file behind nginx `limit_rate $RATE` (per connection)
#   testserver  ferry-testserver's /bytes/$SIZE (hyper, generated content, Range support)
#
# Per variant and run, the order of the tools is rotated by one (run 1: A B C, run 2: B C A, ...),
# so background noise (another build on this 2-core machine) spreads over all tools; the
# tables report medians. Before every timed command the previous output is deleted and
# `sync` runs (not timed), so no tool pays for another's dirty pages. Every output's size is
# checked, and in run 1 its SHA-256 too (against the source file for nginx, against each other
# for the test server), so a broken download cannot look fast.
#
# Only 127.0.0.1 is used. nginx and ferry-testserver are stopped by their recorded pids on exit.
set -euo pipefail

SIZE=${SIZE:-1073741824}
RUNS=${RUNS:-5}
RUNS_THROTTLED=${RUNS_THROTTLED:-3}
RATE=${RATE:-20m}
VARIANTS=${VARIANTS:-plain throttled testserver}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

[[ $SIZE =~ ^[0-9]+$ && $SIZE -gt 0 ]] || die "SIZE must be a positive number of bytes"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 100 ]] || die "RUNS must be 1..100"
[[ $RUNS_THROTTLED =~ ^[0-9]+$ && $RUNS_THROTTLED -ge 1 && $RUNS_THROTTLED -le 100 ]] ||
    die "RUNS_THROTTLED must be 1..100"
[[ $RATE =~ ^[0-9]+[kKmMgG]?$ ]] || die "RATE must look like nginx's limit_rate, e.g. 20m"
for v in $VARIANTS; do
    case $v in plain | throttled | testserver) ;; *) die "unknown variant $v" ;; esac
done

# --- tools ---------------------------------------------------------------------------------
install_tools

log "building ferry (release)"
(cd "$REPO" && cargo build --release --quiet -p ferry-cli -p ferryd -p ferry-testserver)

# --- scratch folder --------------------------------------------------------------------------
make_workdir ferry-bench

NGINX_PID=
SERVER_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n ${DAEMON_STARTED:-} ]]; then "$FERRY" daemon stop >&2 || true; fi
    stop_pid "$NGINX_PID" nginx 50
    stop_pid "$SERVER_PID" ferry-testserver 50
    if [[ $KEEP_WORKDIR == 1 ]]; then
        log "kept $WORKDIR"
    elif [[ $made_workdir == 1 ]]; then
        rm -rf "$WORKDIR"
    else
        rm -rf "$WORKDIR"/{bin,www,out,ferry-home,nginx,testserver.out,results.tsv,cmd.err,time.txt}
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BIN=$WORKDIR/bin
WWW=$WORKDIR/www
OUT=$WORKDIR/out
NGX=$WORKDIR/nginx
export FERRY_HOME=$WORKDIR/ferry-home # same file system as $OUT: placing is a rename
RESULTS=$WORKDIR/results.tsv
mkdir -p "$BIN" "$WWW" "$OUT" "$NGX" "$FERRY_HOME"
: >"$RESULTS"
# nginx's workers run as nobody when started by root: they must be able to read the file.
chmod 755 "$WORKDIR" "$WWW"

# Copies, so a concurrent `cargo build` in the work tree cannot swap the binary mid-run.
cp "$REPO/target/release/ferry" "$REPO/target/release/ferryd" "$REPO/target/release/ferry-testserver" "$BIN/"
FERRY=$BIN/ferry
# `ferry get` hands the download to ferryd (found next to it) and waits for it; the daemon is
# started here, untimed, and stopped on exit.
"$FERRY" daemon start >&2
DAEMON_STARTED=1

log "creating $SIZE random bytes in $WWW/file.bin"
head -c "$SIZE" /dev/urandom >"$WWW/file.bin"
chmod 644 "$WWW/file.bin"
SRC_SHA=$(sha256sum "$WWW/file.bin" | cut -d' ' -f1) # also leaves it in the page cache
sync

# --- nginx ------------------------------------------------------------------------------------
start_nginx "$NGX" 256 "    access_log $NGX/access.log;
    sendfile on;
    tcp_nopush on;" "        root $WWW;
        location /slow/ {
            alias $WWW/;
            limit_rate $RATE;
        }"
PLAIN_URL=http://127.0.0.1:$NGINX_PORT/file.bin
SLOW_URL=http://127.0.0.1:$NGINX_PORT/slow/file.bin
nginx_ready "$NGX" curl -s -o /dev/null -r 0-0 "$PLAIN_URL"

# --- ferry-testserver --------------------------------------------------------------------------
: >"$WORKDIR/testserver.out" # exists before the background job's redirection happens
"$BIN/ferry-testserver" --bind 127.0.0.1:0 >"$WORKDIR/testserver.out" &
SERVER_PID=$!
TS_BASE=
for ((i = 0; i < 100; i++)); do
    TS_BASE=$(sed -n 's/^listening on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$WORKDIR/testserver.out")
    [[ -n $TS_BASE ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "ferry-testserver exited"
    sleep 0.1
done
[[ -n $TS_BASE ]] || die "ferry-testserver did not print its address"
TS_URL=$TS_BASE/bytes/$SIZE

# --- the machine -------------------------------------------------------------------------------
print_machine "ferry download benchmark" "sendfile on, tcp_nopush on, 1 worker"
echo "- ferry --version: $("$FERRY" --version)"
echo "- SIZE=$SIZE RUNS=$RUNS RUNS_THROTTLED=$RUNS_THROTTLED RATE=$RATE VARIANTS=\"$VARIANTS\""
echo

# --- the tools ---------------------------------------------------------------------------------
curl_sync() { curl -sS -o "$1" "$2" && sync "$1"; }

# Sets CMD (the argv to run) and OUTFILE for TOOL VARIANT URL.
set_cmd() {
    local tool=$1 variant=$2 url=$3
    OUTFILE=$OUT/$tool.bin
    case $tool in
    ferry-c1) CMD=("$FERRY" get -q -c 1 -o "$OUTFILE" "$url") ;;
    ferry-c8)
        if [[ $variant == plain ]]; then
            CMD=("$FERRY" get -q -o "$OUTFILE" "$url") # default: 8 connections
        else
            CMD=("$FERRY" get -q -c 8 -o "$OUTFILE" "$url")
        fi
        ;;
    curl) CMD=(curl -sS -o "$OUTFILE" "$url") ;;
    curl+sync) CMD=(curl_sync "$OUTFILE" "$url") ;;
    aria2c-x8)
        CMD=(aria2c -q -x8 -s8 -k1M --allow-overwrite=true --file-allocation=none
            -d "$OUT" -o "$tool.bin" "$url")
        ;;
    *) die "unknown tool $tool" ;;
    esac
}

show_cmd() {
    if [[ ${CMD[0]} == curl_sync ]]; then
        printf 'curl -sS -o %q %q && sync %q\n' "${CMD[1]}" "${CMD[2]}" "${CMD[1]}"
    else
        local s
        s=$(printf '%q ' "${CMD[@]}")
        echo "${s% }"
    fi
}

# Runs TOOL once for VARIANT/RUN, checks the output, appends a line to $RESULTS.
timed_run() {
    local variant=$1 tool=$2 run=$3 url=$4 check_hash=$5 rc=0 t_wall t_user t_sys size sha
    set_cmd "$tool" "$variant" "$url"
    rm -f "$OUTFILE" "$OUTFILE.aria2"
    sync
    TIMEFORMAT='%3R %3U %3S'
    { time "${CMD[@]}" >/dev/null 2>"$WORKDIR/cmd.err"; } 2>"$WORKDIR/time.txt" || rc=$?
    if ((rc != 0)); then
        log "$variant/$tool run $run failed (exit $rc): $(show_cmd)"
        cat "$WORKDIR/cmd.err" >&2
        exit 1
    fi
    read -r t_wall t_user t_sys <"$WORKDIR/time.txt"
    size=$(stat -c %s "$OUTFILE" 2>/dev/null || echo missing)
    [[ $size == "$SIZE" ]] || die "$variant/$tool run $run: output has $size bytes, expected $SIZE"
    if [[ $check_hash == 1 ]]; then
        sha=$(sha256sum "$OUTFILE" | cut -d' ' -f1)
        if [[ -z ${EXPECT_SHA:-} ]]; then
            EXPECT_SHA=$sha # test server: the first tool's bytes are the reference
        elif [[ $sha != "$EXPECT_SHA" ]]; then
            die "$variant/$tool run $run: SHA-256 $sha differs from $EXPECT_SHA"
        fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$variant" "$tool" "$run" "$t_wall" "$t_user" "$t_sys" >>"$RESULTS"
    printf '  run %d  %-10s %8.3f s wall  (user %s s, sys %s s)\n' "$run" "$tool" "$t_wall" "$t_user" "$t_sys" >&2
    rm -f "$OUTFILE" "$OUTFILE.aria2"
}

run_variant() {
    local variant=$1 url runs tools n r i k
    case $variant in
    plain)
        url=$PLAIN_URL runs=$RUNS
        tools=(ferry-c1 ferry-c8 curl curl+sync aria2c-x8)
        EXPECT_SHA=$SRC_SHA
        ;;
    throttled)
        url=$SLOW_URL runs=$RUNS_THROTTLED
        tools=(ferry-c8 curl aria2c-x8)
        EXPECT_SHA=$SRC_SHA
        ;;
    testserver)
        url=$TS_URL runs=$RUNS
        tools=(ferry-c1 ferry-c8 curl aria2c-x8)
        EXPECT_SHA=
        ;;
    esac
    echo "## Variant: $variant"
    echo
    case $variant in
    plain) echo "nginx on 127.0.0.1, sendfile, no limit; $runs runs per tool." ;;
    throttled) echo "nginx limit_rate $RATE per connection; $runs runs per tool." ;;
    testserver) echo "ferry-testserver /bytes/$SIZE (generated content); $runs runs per tool." ;;
    esac
    echo
    echo "Commands:"
    echo
    for tool in "${tools[@]}"; do
        set_cmd "$tool" "$variant" "$url"
        echo "    $tool: $(show_cmd)"
    done
    echo
    log "variant $variant (load $(cut -d' ' -f1-3 /proc/loadavg))"
    n=${#tools[@]}
    for ((r = 1; r <= runs; r++)); do
        for ((i = 0; i < n; i++)); do
            k=$(((i + r - 1) % n))
            timed_run "$variant" "${tools[k]}" "$r" "$url" $((r == 1 ? 1 : 0))
        done
    done
    python3 - "$RESULTS" "$variant" "$SIZE" <<'PY'
import statistics, sys
path, variant, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
rows = [r for r in rows if r[0] == variant]
tools, runs = [], {}
for _, tool, run, wall, user, sys_ in rows:
    if tool not in runs:
        tools.append(tool)
        runs[tool] = []
    runs[tool].append((int(run), float(wall), float(user), float(sys_)))
med = {t: statistics.median(w for _, w, _, _ in runs[t]) for t in tools}

def ratio(t, ref):
    return f"{med[t] / med[ref]:.2f}" if ref in med else "-"

print("| tool | median s | MB/s | min s | max s | CPU user s | CPU sys s | ÷ curl | ÷ aria2c |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in tools:
    ws = [w for _, w, _, _ in runs[t]]
    print(f"| {t} | {med[t]:.3f} | {size / med[t] / 1e6:.0f} | {min(ws):.3f} | {max(ws):.3f} "
          f"| {statistics.median(u for _, _, u, _ in runs[t]):.2f} "
          f"| {statistics.median(s for _, _, _, s in runs[t]):.2f} "
          f"| {ratio(t, 'curl')} | {ratio(t, 'aria2c-x8')} |")
print()
print("Wall seconds per run (run order rotates by one tool each run):")
print()
n = max(len(v) for v in runs.values())
print("| run | " + " | ".join(tools) + " |")
print("|---|" + "---:|" * len(tools))
for i in range(n):
    cells = []
    for t in tools:
        w = [w for r, w, _, _ in runs[t] if r == i + 1]
        cells.append(f"{w[0]:.3f}" if w else "-")
    print(f"| {i + 1} | " + " | ".join(cells) + " |")
print()

def verdict(ok):
    return "MET" if ok else "MISSED"

if variant == "plain" and "ferry-c1" in med and "curl" in med:
    r = med["ferry-c1"] / med["curl"]
    print(f"- target ferry -c 1 ≤ 1.1× curl: ferry-c1/curl = {r:.2f} → {verdict(r <= 1.1)}")
    if "curl+sync" in med:
        print(f"- for reference, ferry-c1/(curl+sync) = {med['ferry-c1'] / med['curl+sync']:.2f}")
if variant == "throttled" and {"ferry-c8", "curl", "aria2c-x8"} <= med.keys():
    a = med["ferry-c8"] / med["aria2c-x8"]
    c = med["curl"] / med["ferry-c8"]
    print(f"- target ferry -c 8 ≤ 1.0× aria2c -x8: ferry-c8/aria2c = {a:.2f} → {verdict(a <= 1.0)}")
    print(f"- target ferry -c 8 ≥ 6× faster than curl: curl/ferry-c8 = {c:.2f} → {verdict(c >= 6.0)}")
print()
PY
    log "variant $variant done (load $(cut -d' ' -f1-3 /proc/loadavg))"
}

for variant in $VARIANTS; do
    run_variant "$variant"
done
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
