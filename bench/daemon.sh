#!/usr/bin/env bash
# Daemon benchmark: ferryd with many small files and many tasks, over loopback.
#
#   bash bench/daemon.sh
#
# Environment (all optional):
#   RUNS          runs per tool, small-files benchmark               (default 5)
#   FILES         number of small files                              (default 2000)
#   FILE_SIZE     bytes per small file                               (default 16384)
#   TASKS         suspended tasks for the queue benchmark            (default 100000)
#   LIST_RUNS     full listings timed in the queue benchmark         (default 3)
#   NOSYNC        1: also run "ferry-nosync", a second daemon under eatmydata (fsync and
#                 fdatasync become no-ops) - a diagnostic of what durability costs, not a
#                 valid configuration; 0: skip it                      (default 1)
#   CURL_SYNC     1: also run "curl+sync": curl, then `sync -f OUT` (one syncfs of the output's
#                 file system) - curl with its files made durable, the fairer comparison for a
#                 daemon that syncs every file; 0: skip it                 (default 1)
#   BASELINE      path of another ferryd binary (e.g. one built before a change): adds the tool
#                 "ferry-base", the same client against a daemon running that binary, rotated
#                 with the others - a before/after comparison under the same load   (default none)
#   PROFILE       1: after the timed runs, two extra ferry runs with `strace -f -c` and
#                 `strace -f -c -w` attached to the daemon (not in the tables)  (default 1)
#   PERF          1: one more extra ferry run with `perf record -g` on the daemon, and the
#                 top of `perf report` (needs perf; not in the tables)  (default 0)
#   OUTPUTS       what happens to a run's output after its check: `aside` moves the folder
#                 under WORKDIR/old (deleted at exit); `delete` removes it at once. With
#                 `delete`, every later run allocates inodes among thousands of just-freed
#                 ones, and ext4's allocator (find_inode_bit/recently_deleted) then burns
#                 seconds of kernel time in every tool's open(O_CREAT)   (default aside)
#   CLIENT        the ferry tools' client in the small-files benchmark: `rust` (the ferry
#                 library's example `many`, an application's view) or `python`
#                 (bench/daemon_client.py `many`, which adds ~0.15 s of interpreter start
#                 and acknowledges once at the end); `both`: rust, plus a tool "ferry-py",
#                 the Python client against the same daemon               (default rust)
#   BENCHES       which benchmarks, in order                         (default "small queue")
#   WORKDIR       scratch folder; must not be tmpfs                  (default: mktemp -d under /var/tmp)
#   KEEP_WORKDIR=1  keep the scratch folder at the end
#
# small: FILES files of FILE_SIZE random bytes served by nginx (sendfile, keepalive,
#   keepalive_requests 10000, 1 worker) on 127.0.0.1. Tools: ferry (the client named by CLIENT
#   against a ferryd started beforehand with FERRY_MAX_RUNNING=16, session config
#   max_concurrent 16 / max_per_host 16), aria2c -j16 -x1, curl --parallel --parallel-max 16.
#   Each run goes into a fresh empty folder; the order of the tools rotates by one each run.
#   With CURL_SYNC=1 also curl+sync (above). Every output file's size and MD5 are checked
#   after every run. Tables report medians.
# queue: a fresh ferryd; TASKS suspended tasks created with create_downloads (batches of
#   2000), then the daemon's VmRSS/VmHWM, then LIST_RUNS full listings (list_tasks, following
#   `next`).
#
# Only 127.0.0.1 is used. nginx and the daemons are stopped by their recorded pids on exit.
set -euo pipefail

RUNS=${RUNS:-5}
FILES=${FILES:-2000}
FILE_SIZE=${FILE_SIZE:-16384}
TASKS=${TASKS:-100000}
LIST_RUNS=${LIST_RUNS:-3}
NOSYNC=${NOSYNC:-1}
CURL_SYNC=${CURL_SYNC:-1}
PROFILE=${PROFILE:-1}
PERF=${PERF:-0}
OUTPUTS=${OUTPUTS:-aside}
BENCHES=${BENCHES:-small queue}
BASELINE=${BASELINE:-}
CLIENT_KIND=${CLIENT:-rust}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 100 ]] || die "RUNS must be 1..100"
[[ $FILES =~ ^[0-9]+$ && $FILES -ge 1 && $FILES -le 9999 ]] || die "FILES must be 1..9999"
[[ $FILE_SIZE =~ ^[0-9]+$ && $FILE_SIZE -ge 1 ]] || die "FILE_SIZE must be a positive number"
[[ $TASKS =~ ^[0-9]+$ && $TASKS -ge 1 ]] || die "TASKS must be a positive number"
[[ $LIST_RUNS =~ ^[0-9]+$ && $LIST_RUNS -ge 1 && $LIST_RUNS -le 100 ]] || die "LIST_RUNS must be 1..100"
for b in $BENCHES; do
    case $b in small | queue) ;; *) die "unknown benchmark $b" ;; esac
done
[[ $OUTPUTS == aside || $OUTPUTS == delete ]] || die "OUTPUTS must be aside or delete"
[[ -z $BASELINE || -x $BASELINE ]] || die "BASELINE must be an executable ferryd"
[[ $CLIENT_KIND =~ ^(rust|python|both)$ ]] || die "CLIENT must be rust, python or both"

CLIENT=$REPO/bench/daemon_client.py

# --- tools ---------------------------------------------------------------------------------
extra=()
[[ $NOSYNC != 1 ]] || command -v eatmydata >/dev/null 2>&1 || extra+=(eatmydata)
[[ $PROFILE != 1 ]] || command -v strace >/dev/null 2>&1 || extra+=(strace)
[[ $PERF != 1 ]] || command -v perf >/dev/null 2>&1 || die "PERF=1 needs perf (linux-perf)"
install_tools "${extra[@]}"
curl --help all 2>/dev/null | grep -q -- '--parallel-max' || die "this curl has no --parallel-max"

log "building ferryd (release)"
(cd "$REPO" && cargo build --release --quiet -p ferryd -p ferry-cli -p ferry-testserver &&
    cargo build --release --quiet -p ferry --example many)

# --- scratch folder --------------------------------------------------------------------------
make_workdir ferry-dbench

NGINX_PID=
DAEMON_PIDS=()
STRACE_PID=
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    [[ -z $STRACE_PID ]] || stop_pid "$STRACE_PID" strace
    for p in "${DAEMON_PIDS[@]}"; do stop_pid "$p" ferryd; done
    stop_pid "$NGINX_PID" nginx
    if [[ $KEEP_WORKDIR == 1 ]]; then
        log "kept $WORKDIR"
    elif [[ $made_workdir == 1 ]]; then
        rm -rf "$WORKDIR"
    else
        rm -rf "$WORKDIR"/{bin,www,out,old,home-*,nginx,lists,results.tsv,cmd.err,time.txt,client.err,strace.txt,perf.data,perf.txt}
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
LISTS=$WORKDIR/lists
RESULTS=$WORKDIR/results.tsv
mkdir -p "$BIN" "$WWW/d" "$NGX" "$LISTS"
: >"$RESULTS"
chmod 755 "$WORKDIR" "$WWW" "$WWW/d" # nginx's worker runs as nobody when started by root

# Copies, so a concurrent `cargo build` in the work tree cannot swap the binary mid-run.
cp "$REPO/target/release/ferryd" "$REPO/target/release/examples/many" "$BIN/"
[[ -z $BASELINE ]] || cp "$BASELINE" "$BIN/ferryd-base"

# Starts a ferryd with FERRY_HOME=$1 (extra words after it: a wrapper command such as
# eatmydata); sets DAEMON_PID and DAEMON_SOCK.
start_daemon() {
    local home=$1
    shift
    mkdir -p "$home"
    FERRY_HOME=$home FERRY_LOG=warn FERRY_MAX_RUNNING=16 "$@" "${DAEMON_BIN:-$BIN/ferryd}" 2>>"$home.log" &
    DAEMON_PID=$!
    DAEMON_PIDS+=("$DAEMON_PID")
    DAEMON_SOCK=$home/ferryd.sock
    python3 "$CLIENT" wait --socket "$DAEMON_SOCK" --timeout 30 ||
        die "ferryd did not come up (see $home.log): $(cat "$home.log")"
    kill -0 "$DAEMON_PID" 2>/dev/null || die "ferryd exited: $(cat "$home.log")"
}

cpu_ticks() { # utime + stime of a process (all its threads), in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
thread_ticks() { # PID NAME: utime + stime of the process's threads named NAME
    local t sum=0 c
    for t in /proc/"$1"/task/*; do
        c=$(cat "$t/comm" 2>/dev/null) || continue
        [[ $c == "$2" ]] || continue
        sum=$((sum + $(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

# --- the machine -------------------------------------------------------------------------------
print_machine "ferryd benchmark: many small files, many tasks" \
    "sendfile on, tcp_nopush on, keepalive_requests 10000, 1 worker"
echo "- python3: $(python3 --version 2>&1); ferry client: $CLIENT_KIND"
echo "- RUNS=$RUNS FILES=$FILES FILE_SIZE=$FILE_SIZE TASKS=$TASKS LIST_RUNS=$LIST_RUNS NOSYNC=$NOSYNC PROFILE=$PROFILE PERF=$PERF OUTPUTS=$OUTPUTS${BASELINE:+ BASELINE=$BASELINE}"
echo

# ================================================================================================
# small: many small files
# ================================================================================================
bench_small() {
    log "creating $FILES files of $FILE_SIZE random bytes"
    python3 - "$WWW/d" "$FILES" "$FILE_SIZE" <<'PY'
import hashlib, os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(os.path.join(d, "..", "manifest.md5"), "w") as m:
    for i in range(n):
        data = os.urandom(size)
        with open(os.path.join(d, f"f{i:04d}"), "wb") as f:
            f.write(data)
        m.write(f"{hashlib.md5(data).hexdigest()}  f{i:04d}\n")
PY
    chmod 644 "$WWW"/d/*
    cat "$WWW"/d/* >/dev/null # into the page cache
    sync

    start_nginx "$NGX" 1024 "    log_format bench '\$connection \$connection_requests \$status \$body_bytes_sent';
    access_log $NGX/access.log bench;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 10000;" "        root $WWW;"
    local base=http://127.0.0.1:$NGINX_PORT/d
    nginx_ready "$NGX" curl -s -o /dev/null "$base/f0000"
    local nginx_worker
    nginx_worker=$(pgrep -P "$NGINX_PID" | head -1 || true)

    # Input lists: one per tool, all naming OUT/fNNNN.
    python3 - "$LISTS" "$base" "$OUT" "$FILES" <<'PY'
import os, sys
lists, base, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(os.path.join(lists, "urls.txt"), "w") as u, \
     open(os.path.join(lists, "aria2.txt"), "w") as a, \
     open(os.path.join(lists, "curl.cfg"), "w") as c:
    for i in range(n):
        url = f"{base}/f{i:04d}"
        u.write(url + "\n")
        a.write(f"{url}\n  out=f{i:04d}\n")
        c.write(f'url = "{url}"\noutput = "{out}/f{i:04d}"\n')
PY

    # The daemons, started once, not timed.
    start_daemon "$WORKDIR/home-ferry"
    FERRY_DAEMON=$DAEMON_PID
    local tools=(ferry aria2c curl)
    [[ $CURL_SYNC != 1 ]] || tools+=(curl+sync)
    if [[ $NOSYNC == 1 ]]; then
        start_daemon "$WORKDIR/home-nosync" eatmydata
        NOSYNC_DAEMON=$DAEMON_PID
        tools+=(ferry-nosync)
    fi
    [[ $CLIENT_KIND != both ]] || tools+=(ferry-py)
    if [[ -n $BASELINE ]]; then
        DAEMON_BIN=$BIN/ferryd-base start_daemon "$WORKDIR/home-base"
        BASE_DAEMON=$DAEMON_PID
        tools+=(ferry-base)
    fi

    echo "## Small files: $FILES × $FILE_SIZE bytes, $RUNS runs per tool"
    echo
    echo "nginx on 127.0.0.1 ($base/fNNNN). Each run writes into a fresh empty OUT=$OUT;"
    echo "after its check the folder is $([[ $OUTPUTS == aside ]] && echo "moved aside (OUTPUTS=aside)" || echo "deleted (OUTPUTS=delete)")."
    echo "ferryd: FERRY_MAX_RUNNING=16, started before the runs (not timed), FERRY_HOME on the same file system as OUT."
    echo
    echo "Commands (timed from start to exit):"
    echo
    local t
    for t in "${tools[@]}"; do
        set_cmd "$t"
        echo "    $t: $(show_cmd)"
    done
    echo
    log "small files (load $(cut -d' ' -f1-3 /proc/loadavg))"
    local n=${#tools[@]} r k
    for ((r = 1; r <= RUNS; r++)); do
        for ((i = 0; i < n; i++)); do
            k=$(((i + r - 1) % n))
            timed_run "${tools[k]}" "$r" "$nginx_worker"
        done
    done
    small_tables
    if [[ $PROFILE == 1 ]]; then
        profile_run
    fi
    if [[ $PERF == 1 ]]; then
        perf_run
    fi
    echo "- load average after the small-files runs: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    stop_pid "$FERRY_DAEMON" ferryd
    [[ $NOSYNC != 1 ]] || stop_pid "$NOSYNC_DAEMON" ferryd
    [[ -z $BASELINE ]] || stop_pid "$BASE_DAEMON" ferryd
    DAEMON_PIDS=()
    stop_pid "$NGINX_PID" nginx
    NGINX_PID=
}

set_cmd() {
    case $1 in
    ferry) many_cmd "$WORKDIR/home-ferry" ;;
    ferry-nosync) many_cmd "$WORKDIR/home-nosync" ;;
    ferry-base) many_cmd "$WORKDIR/home-base" ;;
    ferry-py) CMD=(python3 "$CLIENT" many --socket "$WORKDIR/home-ferry/ferryd.sock" --session bench-py --urls "$LISTS/urls.txt" --out "$OUT") ;;
    aria2c)
        CMD=(aria2c -q -j16 -x1 -i "$LISTS/aria2.txt" -d "$OUT" --allow-overwrite=true
            --file-allocation=none)
        ;;
    curl) CMD=(curl --parallel --parallel-max 16 -s -K "$LISTS/curl.cfg") ;;
    # curl, then one syncfs(2) of OUT's file system: the cheapest way to make curl's files
    # durable (ferry syncs each file before its rename and the folder after it, SPEC §10).
    curl+sync) CMD=(sh -c 'curl --parallel --parallel-max 16 -s -K "$1" && exec sync -f "$2"' sh "$LISTS/curl.cfg" "$OUT") ;;
    *) die "unknown tool $1" ;;
    esac
}

many_cmd() { # FERRY_HOME: the ferry client command against the daemon of that home
    if [[ $CLIENT_KIND != python ]]; then
        CMD=(env "FERRY_HOME=$1" "$BIN/many" --urls "$LISTS/urls.txt" --out "$OUT")
    else
        CMD=(python3 "$CLIENT" many --socket "$1/ferryd.sock" --urls "$LISTS/urls.txt" --out "$OUT")
    fi
}

show_cmd() {
    local s
    s=$(printf '%q ' "${CMD[@]}")
    echo "${s% }"
}

# Checks OUT: exactly FILES files, each FILE_SIZE bytes, each with the source's MD5.
check_out() {
    local tool=$1 run=$2 count good
    count=$(find "$OUT" -mindepth 1 | wc -l)
    good=$(find "$OUT" -maxdepth 1 -type f -size "${FILE_SIZE}c" | wc -l)
    [[ $count == "$FILES" && $good == "$FILES" ]] ||
        die "$tool run $run: OUT has $count entries, $good of them files of $FILE_SIZE bytes (expected $FILES)"
    (cd "$OUT" && md5sum --quiet -c "$WWW/manifest.md5") >/dev/null 2>&1 ||
        die "$tool run $run: MD5 mismatch in OUT"
}

timed_run() {
    local tool=$1 run=$2 worker=$3 rc=0 t_wall t_user t_sys d0=0 d1=0 n0 n1 log0 conns bad daemon=
    set_cmd "$tool"
    rm -rf "$OUT"
    mkdir -p "$OUT"
    sync
    case $tool in ferry | ferry-py) daemon=$FERRY_DAEMON ;; ferry-nosync) daemon=$NOSYNC_DAEMON ;; ferry-base) daemon=$BASE_DAEMON ;; esac
    local s0=0 s1=0
    [[ -z $daemon ]] || { d0=$(cpu_ticks "$daemon"); s0=$(thread_ticks "$daemon" ferryd-store); }
    n0=$(cpu_ticks "$worker")
    log0=$(wc -l <"$NGX/access.log")
    TIMEFORMAT='%3R %3U %3S'
    { time "${CMD[@]}" >/dev/null 2>"$WORKDIR/cmd.err"; } 2>"$WORKDIR/time.txt" || rc=$?
    [[ -z $daemon ]] || { d1=$(cpu_ticks "$daemon"); s1=$(thread_ticks "$daemon" ferryd-store); }
    n1=$(cpu_ticks "$worker")
    if ((rc != 0)); then
        log "$tool run $run failed (exit $rc): $(show_cmd)"
        cat "$WORKDIR/cmd.err" >&2
        exit 1
    fi
    read -r t_wall t_user t_sys <"$WORKDIR/time.txt"
    check_out "$tool" "$run"
    sleep 0.2 # nginx logs a request when it is done with it
    conns=$(tail -n +$((log0 + 1)) "$NGX/access.log" | awk '{ print $1 }' | sort -u | wc -l)
    bad=$(tail -n +$((log0 + 1)) "$NGX/access.log" | awk '$3 != 200' | wc -l)
    local dcpu=- ncpu scpu=-
    [[ -z $daemon ]] || dcpu=$(awk -v a="$d0" -v b="$d1" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    [[ -z $daemon ]] || scpu=$(awk -v a="$s0" -v b="$s1" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    ncpu=$(awk -v a="$n0" -v b="$n1" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' small "$tool" "$run" "$t_wall" "$t_user" "$t_sys" \
        "$dcpu" "$ncpu" "$conns/$bad" "$scpu" >>"$RESULTS"
    printf '  run %d  %-12s %7.3f s wall  (client user %s s, sys %s s; daemon CPU %s s, store thread %s s; nginx CPU %s s; %s connections, %s non-200) %s\n' \
        "$run" "$tool" "$t_wall" "$t_user" "$t_sys" "$dcpu" "$scpu" "$ncpu" "$conns" "$bad" \
        "$(grep -o 'attach_s.*' "$WORKDIR/cmd.err" || true)" >&2
    drop_out "$tool.$run"
}

drop_out() { # NAME: move OUT aside (OUTPUTS=aside) or delete it
    if [[ $OUTPUTS == aside ]]; then
        mkdir -p "$WORKDIR/old"
        mv "$OUT" "$WORKDIR/old/$1"
    else
        rm -rf "$OUT"
    fi
}

small_tables() {
    python3 - "$RESULTS" "$FILES" "$FILE_SIZE" <<'PY'
import statistics, sys
path, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
rows = [r for r in rows if r[0] == "small"]
tools, runs = [], {}
for _, tool, run, wall, user, sys_, dcpu, ncpu, conns, scpu in rows:
    if tool not in runs:
        tools.append(tool)
        runs[tool] = []
    runs[tool].append(dict(run=int(run), wall=float(wall), user=float(user), sys=float(sys_),
                           dcpu=None if dcpu == "-" else float(dcpu), ncpu=float(ncpu),
                           scpu=None if scpu == "-" else float(scpu),
                           conns=int(conns.split("/")[0])))
med = {t: statistics.median(x["wall"] for x in runs[t]) for t in tools}

def m(t, k):
    v = [x[k] for x in runs[t] if x[k] is not None]
    return statistics.median(v) if v else None

def ratio(t, ref):
    return f"{med[t] / med[ref]:.2f}" if ref in med else "-"

print("| tool | median s | files/s | min s | max s | client CPU s (user+sys) | daemon CPU s | store thread CPU s | nginx CPU s | connections | ÷ curl | ÷ curl+sync | ÷ aria2c |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in tools:
    ws = [x["wall"] for x in runs[t]]
    d = m(t, "dcpu")
    sc = m(t, "scpu")
    print(f"| {t} | {med[t]:.3f} | {files / med[t]:.0f} | {min(ws):.3f} | {max(ws):.3f} "
          f"| {statistics.median(x['user'] + x['sys'] for x in runs[t]):.2f} "
          f"| {'-' if d is None else f'{d:.2f}'} | {'-' if sc is None else f'{sc:.2f}'} | {m(t, 'ncpu'):.2f} | {m(t, 'conns'):.0f} "
          f"| {ratio(t, 'curl')} | {ratio(t, 'curl+sync')} | {ratio(t, 'aria2c')} |")
print()
print("Medians over the runs; CPU columns are medians too. daemon CPU: ferryd's utime+stime during")
print("the run (not the client's); store thread: its `ferryd-store` (SQLite writer) thread alone.")
print("connections: distinct TCP connections in nginx's log (the most requests that were ever in flight at once).")
print()
print("Wall seconds per run (the order of the tools rotates by one each run):")
print()
n = max(len(v) for v in runs.values())
print("| run | " + " | ".join(tools) + " |")
print("|---|" + "---:|" * len(tools))
for i in range(n):
    cells = []
    for t in tools:
        w = [x["wall"] for x in runs[t] if x["run"] == i + 1]
        cells.append(f"{w[0]:.3f}" if w else "-")
    print(f"| {i + 1} | " + " | ".join(cells) + " |")
print()

def verdict(ok):
    return "MET" if ok else "MISSED"

if {"ferry", "aria2c", "curl"} <= med.keys():
    a = med["ferry"] / med["aria2c"]
    c = med["ferry"] / med["curl"]
    print(f"- target ferry/aria2c ≤ 0.5 (2× faster): {med['ferry']:.3f} / {med['aria2c']:.3f} = {a:.2f} → **{verdict(a <= 0.5)}**")
    print(f"- target ferry/curl ≤ 2.0: {med['ferry']:.3f} / {med['curl']:.3f} = {c:.2f} → **{verdict(c <= 2.0)}**")
if {"ferry", "curl+sync"} <= med.keys():
    print(f"- comparison with durable output: ferry/curl+sync = {med['ferry']:.3f} / {med['curl+sync']:.3f} = "
          f"{med['ferry'] / med['curl+sync']:.2f} (curl+sync/curl = {ratio('curl+sync', 'curl')})")
if "ferry-nosync" in med:
    print(f"- diagnostic: ferry-nosync (ferryd under eatmydata: no fsync/fdatasync) {med['ferry-nosync']:.3f} s = "
          f"{med['ferry-nosync'] / med['ferry']:.2f}× ferry, {ratio('ferry-nosync', 'aria2c')}× aria2c, {ratio('ferry-nosync', 'curl')}× curl")
if "ferry-base" in med:
    print(f"- before/after: ferry-base (the BASELINE binary) {med['ferry-base']:.3f} s; ferry {med['ferry']:.3f} s = "
          f"{med['ferry'] / med['ferry-base']:.2f}× ferry-base; ferry-base {ratio('ferry-base', 'aria2c')}× aria2c, {ratio('ferry-base', 'curl')}× curl")
print()
PY
}

# Two extra ferry runs with strace counting the daemon's system calls (not in the tables):
# `-c` (system CPU time per call) and `-c -w` (wall time inside each call, summed over threads).
profile_run() {
    local mode t0 t1 flags
    echo "### Where ferryd's time goes: strace of the daemon during extra runs"
    echo
    echo "Not in the tables: strace slows every system call. \`strace -f -c\` counts system CPU time per"
    echo "call; \`strace -f -c -w\` counts wall time spent inside each call, summed over all threads"
    echo "(so idle threads waiting in futex/epoll_wait dominate its total)."
    echo
    for mode in cpu wall; do
        flags=(-f -c)
        [[ $mode == wall ]] && flags+=(-w)
        log "profile: one ferry run with strace ${flags[*]} attached to ferryd ($FERRY_DAEMON)"
        rm -rf "$OUT"
        mkdir -p "$OUT"
        sync
        strace "${flags[@]}" -p "$FERRY_DAEMON" -o "$WORKDIR/strace.txt" 2>/dev/null &
        STRACE_PID=$!
        sleep 1 # attach to every thread
        t0=$(date +%s.%N)
        set_cmd ferry
        "${CMD[@]}" >/dev/null 2>"$WORKDIR/cmd.err" || die "profiled ferry run failed: $(cat "$WORKDIR/cmd.err")"
        t1=$(date +%s.%N)
        check_out ferry-profiled 0
        kill -INT "$STRACE_PID" 2>/dev/null || true
        wait "$STRACE_PID" 2>/dev/null || true
        STRACE_PID=
        drop_out "strace-$mode"
        echo "\`strace ${flags[*]} -p <ferryd>\`, run wall time under strace $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') s:"
        echo
        echo '```'
        head -n 22 "$WORKDIR/strace.txt"
        echo '```'
        echo
    done
}

# One extra ferry run with perf sampling the daemon (all threads, call graphs).
perf_run() {
    log "perf: one ferry run with perf record -g on ferryd ($FERRY_DAEMON)"
    rm -rf "$OUT"
    mkdir -p "$OUT"
    sync
    perf record -q -g -F 999 -p "$FERRY_DAEMON" -o "$WORKDIR/perf.data" 2>"$WORKDIR/perf.err" &
    STRACE_PID=$!
    sleep 1
    set_cmd ferry
    "${CMD[@]}" >/dev/null 2>"$WORKDIR/cmd.err" || die "perf ferry run failed: $(cat "$WORKDIR/cmd.err")"
    check_out ferry-perf 0
    kill -INT "$STRACE_PID" 2>/dev/null || true
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=
    drop_out perf
    echo "### perf: where ferryd's CPU goes (one extra run, \`perf record -g -F 999 -p <ferryd>\`)"
    echo
    echo "Self time by thread name (comm):"
    echo
    echo '```'
    perf report -i "$WORKDIR/perf.data" --no-children --sort comm --stdio -g none >"$WORKDIR/perf.txt" 2>>"$WORKDIR/perf.err" || log "perf report failed: $(tail -3 "$WORKDIR/perf.err")"
    grep -v -e '^#' -e '^$' "$WORKDIR/perf.txt" | sed -n 1,12p
    echo '```'
    echo
    echo "Self time by shared object and symbol (top 30):"
    echo
    echo '```'
    perf report -i "$WORKDIR/perf.data" --no-children --sort dso,sym --stdio -g none >"$WORKDIR/perf.txt" 2>/dev/null || true
    grep -v -e '^#' -e '^$' "$WORKDIR/perf.txt" | sed -n 1,30p
    echo '```'
    echo
    rm -f "$WORKDIR/perf.data" "$WORKDIR/perf.txt"
}

# ================================================================================================
# queue: many suspended tasks
# ================================================================================================
bench_queue() {
    start_daemon "$WORKDIR/home-queue"
    local pid=$DAEMON_PID sock=$DAEMON_SOCK rss0 enq rss1 hwm1 i res lists=() rss2 hwm2 db wal
    rss0=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
    log "queue: enqueueing $TASKS suspended tasks"
    enq=$(python3 "$CLIENT" enqueue --socket "$sock" --count "$TASKS")
    rss1=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
    hwm1=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
    for ((i = 1; i <= LIST_RUNS; i++)); do
        res=$(python3 "$CLIENT" list --socket "$sock" --expect "$TASKS")
        log "  listing $i: $res"
        lists+=("$(sed -n 's/.*list_s=\([0-9.]*\).*/\1/p' <<<"$res")")
    done
    rss2=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
    hwm2=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
    db=$(stat -c %s "$WORKDIR/home-queue/ferry.db")
    wal=$(stat -c %s "$WORKDIR/home-queue/ferry.db-wal" 2>/dev/null || echo 0)
    echo "## Queue: $TASKS suspended tasks"
    echo
    echo "A fresh ferryd (FERRY_MAX_RUNNING=16)."
    echo
    echo "    python3 bench/daemon_client.py enqueue --socket SOCK --count $TASKS   # create_downloads, batches of 2000, start: false"
    echo "    python3 bench/daemon_client.py list --socket SOCK --expect $TASKS     # list_tasks following next, $LIST_RUNS times"
    echo
    python3 - "$enq" "$res" "$rss0" "$rss1" "$hwm1" "$rss2" "$hwm2" "$db" "$wal" "$TASKS" "${lists[@]}" <<'PY'
import statistics, sys
enq, last, rss0, rss1, hwm1, rss2, hwm2, db, wal, tasks = sys.argv[1:11]
lists = [float(x) for x in sys.argv[11:]]
kv = dict(w.split("=", 1) for w in enq.split())
lv = dict(w.split("=", 1) for w in last.split())
mib = lambda kb: int(kb) / 1024
print("| measure | value |")
print("|---|---:|")
print(f"| enqueue {tasks} (wall) | {float(kv['enqueue_s']):.2f} s ({kv['per_s']} tasks/s; slowest batch {kv['slowest_batch_s']} s) |")
print(f"| daemon VmRSS idle, before enqueue | {mib(rss0):.1f} MiB |")
print(f"| daemon VmRSS after enqueue | {mib(rss1):.1f} MiB (VmHWM {mib(hwm1):.1f} MiB) |")
print(f"| daemon VmRSS after the listings | {mib(rss2):.1f} MiB (VmHWM {mib(hwm2):.1f} MiB) |")
print(f"| full listing (median of {len(lists)}) | {statistics.median(lists):.3f} s ({lv['pages']} pages; runs: {', '.join(f'{x:.3f}' for x in lists)}) |")
print(f"| ferry.db + ferry.db-wal | {int(db) / 2**20:.1f} MiB + {int(wal) / 2**20:.1f} MiB |")
print()
hwm = max(mib(hwm1), mib(hwm2))
ok_rss = hwm <= 200
med = statistics.median(lists)
print(f"- target daemon RSS ≤ 200 MiB: peak VmHWM {hwm:.1f} MiB → **{'MET' if ok_rss else 'MISSED'}**")
print(f"- target full listing < 2 s: median {med:.3f} s, slowest {max(lists):.3f} s → **{'MET' if max(lists) < 2 else 'MISSED'}**")
print()
PY
    stop_pid "$pid" ferryd
    DAEMON_PIDS=()
}

for b in $BENCHES; do
    "bench_$b"
done
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
