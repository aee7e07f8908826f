#!/usr/bin/env bash
# Upload benchmark: `ferry put` against `curl -T`, one large file PUT to nginx over loopback.
#
#   bash bench/upload.sh
#
# Environment (all optional):
#   SIZE_MB         MiB to upload                          (default 1024 = 1 GiB)
#   RUNS            runs per tool                          (default 5)
#   VARIANTS        which tools, rotated in this order     (default "curl ferry")
#   WORKDIR         scratch folder; must not be tmpfs      (default: mktemp -d under /var/tmp)
#   KEEP_WORKDIR=1  keep the scratch folder at the end
#
# Tools (each sends WORKDIR/src/file.bin to nginx at /up/TOOL.bin):
#   curl   curl -sS -f -o /dev/null -T FILE URL
#   ferry  ferry put -q FILE URL (through ferryd, started untimed beforehand). Skipped, with a
#          message in the report, when `ferry put --help` fails (a build without `put`).
#
# The server is nginx's ngx_http_dav_module (`dav_methods PUT`, 1 worker) on 127.0.0.1: it
# reads the body into a temporary file under client_body_temp_path, then renames it to the
# target (both in WORKDIR, one file system) and answers 201. nginx does not fsync the file, so
# the time ends when the data is in the page cache, for every tool alike.
#
# One untimed curl upload comes first (the first GiB written costs ~1 s more than later ones).
# Per run, the order of the tools is rotated by one (run 1: A B, run 2: B A, ...), so background
# noise spreads over all tools; the tables report medians. Before every timed command the
# previous upload is deleted (nginx always creates the file) and `sync` runs (not timed), so no
# tool pays for another's dirty pages. Every uploaded file's size is checked, and in run 1 its
# SHA-256 too, against the source, so a broken upload cannot look fast.
#
# Only 127.0.0.1 is used. nginx is stopped by its recorded pid, ferryd by `ferry daemon stop`.
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-5}
VARIANTS=${VARIANTS:-curl ferry}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

[[ $SIZE_MB =~ ^[0-9]+$ && $SIZE_MB -gt 0 ]] || die "SIZE_MB must be a positive number of MiB"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 && $RUNS -le 100 ]] || die "RUNS must be 1..100"
SIZE=$((SIZE_MB * 1048576))
TOOLS=()
for v in $VARIANTS; do
    case $v in curl | ferry) TOOLS+=("$v") ;; *) die "unknown variant $v (curl or ferry)" ;; esac
done
((${#TOOLS[@]})) || die "VARIANTS is empty"
want_ferry=0
[[ " ${TOOLS[*]} " == *" ferry "* ]] && want_ferry=1

# --- tools ---------------------------------------------------------------------------------
# shellcheck disable=SC2119 # no extra packages
install_tools
"$NGINX" -V 2>&1 | grep -q -- '--with-http_dav_module' ||
    die "$NGINX has no ngx_http_dav_module (nginx -V shows no --with-http_dav_module)"

if ((want_ferry)); then
    log "building ferry (release)"
    (cd "$REPO" && cargo build --release --quiet -p ferry-cli -p ferryd) ||
        die "cargo build failed; VARIANTS=curl runs curl alone, without building"
fi

# --- scratch folder --------------------------------------------------------------------------
make_workdir ferry-ubench

NGINX_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n ${DAEMON_STARTED:-} ]]; then "$FERRY" daemon stop >&2 || true; fi
    stop_pid "$NGINX_PID" nginx 50
    if [[ $KEEP_WORKDIR == 1 ]]; then
        log "kept $WORKDIR"
    elif [[ $made_workdir == 1 ]]; then
        rm -rf "$WORKDIR"
    else
        rm -rf "${WORKDIR:?}"/{bin,src,up,ferry-home,nginx,results.tsv,cmd.err,time.txt}
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BIN=$WORKDIR/bin
SRC=$WORKDIR/src
UP=$WORKDIR/up
NGX=$WORKDIR/nginx
export FERRY_HOME=$WORKDIR/ferry-home
RESULTS=$WORKDIR/results.tsv
mkdir -p "$BIN" "$SRC" "$UP" "$NGX" "$FERRY_HOME"
: >"$RESULTS"
# nginx's worker runs as nobody when started by root: it must be able to create files in $UP
# (and rename its temporary files there). nginx creates and chowns client_body_temp_path itself.
chmod 755 "$WORKDIR"
chmod 777 "$UP"

FERRY=$BIN/ferry
FERRY_SKIPPED=
DAEMON_PID=
if ((want_ferry)); then
    # Copies, so a concurrent `cargo build` in the work tree cannot swap the binary mid-run.
    cp "$REPO/target/release/ferry" "$REPO/target/release/ferryd" "$BIN/"
    if ! "$FERRY" put --help >/dev/null 2>&1; then
        FERRY_SKIPPED="\`ferry put --help\` failed: this build has no \`ferry put\`; the ferry variant is skipped"
        log "$FERRY_SKIPPED"
        kept=()
        for t in "${TOOLS[@]}"; do [[ $t == ferry ]] || kept+=("$t"); done
        TOOLS=("${kept[@]}")
    else
        # `ferry put` hands the upload to ferryd (found next to it) and waits for it; the daemon
        # is started here, untimed, and stopped on exit.
        started=$("$FERRY" daemon start)
        DAEMON_STARTED=1
        echo "$started" >&2
        DAEMON_PID=$(sed -n 's/.* pid \([0-9]*\),.*/\1/p' <<<"$started")
        [[ -n $DAEMON_PID ]] || log "warning: no pid in \`ferry daemon start\`'s output; ferryd's CPU is not reported"
    fi
fi

log "creating $SIZE random bytes in $SRC/file.bin"
head -c "$SIZE" /dev/urandom >"$SRC/file.bin"
SRC_SHA=$(sha256sum "$SRC/file.bin" | cut -d' ' -f1) # also leaves it in the page cache
sync

# --- nginx ------------------------------------------------------------------------------------
start_nginx "$NGX" 256 "    access_log $NGX/access.log;" "        root $WORKDIR;
        location /up/ {
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }"
BASE_URL=http://127.0.0.1:$NGINX_PORT/up
# A zero-byte PUT: nginx answers, and the module really accepts PUT here.
nginx_ready "$NGX" curl -s -f -o /dev/null -X PUT --data-binary '' "$BASE_URL/probe"
rm -f "$UP/probe"

# --- the machine -------------------------------------------------------------------------------
print_machine "ferry upload benchmark" "ngx_http_dav_module PUT, client_body_buffer_size 1m, no fsync, 1 worker"
if ((want_ferry)) && [[ -z $FERRY_SKIPPED ]]; then
    echo "- ferry --version: $("$FERRY" --version)"
fi
echo "- SIZE_MB=$SIZE_MB ($SIZE bytes) RUNS=$RUNS VARIANTS=\"$VARIANTS\""
[[ -z $FERRY_SKIPPED ]] || echo "- **$FERRY_SKIPPED.**"
echo
((${#TOOLS[@]})) || die "no variant left to run"

# --- the tools ---------------------------------------------------------------------------------
# Sets CMD (the argv to run), URL and UPFILE (where nginx puts the body) for TOOL.
set_cmd() {
    URL=$BASE_URL/$1.bin
    UPFILE=$UP/$1.bin
    case $1 in
    curl) CMD=(curl -sS -f -o /dev/null -T "$SRC/file.bin" "$URL") ;;
    ferry) CMD=("$FERRY" put -q "$SRC/file.bin" "$URL") ;;
    *) die "unknown tool $1" ;;
    esac
}

show_cmd() {
    local s
    s=$(printf '%q ' "${CMD[@]}")
    echo "${s% }"
}

cpu_ticks() { # utime + stime of a process (all its threads), in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
CLK_TCK=$(getconf CLK_TCK)

# Runs TOOL once for RUN, checks the upload, appends a line to $RESULTS.
timed_run() {
    local tool=$1 run=$2 check_hash=$3 rc=0 t_wall t_user t_sys size sha d0=0 d1=0 t_daemon=-
    set_cmd "$tool"
    rm -f "$UPFILE"
    sync
    [[ $tool != ferry || -z $DAEMON_PID ]] || d0=$(cpu_ticks "$DAEMON_PID")
    TIMEFORMAT='%3R %3U %3S'
    { time "${CMD[@]}" >/dev/null 2>"$WORKDIR/cmd.err"; } 2>"$WORKDIR/time.txt" || rc=$?
    if [[ $tool == ferry && -n $DAEMON_PID ]]; then
        d1=$(cpu_ticks "$DAEMON_PID")
        t_daemon=$(awk -v a="$d0" -v b="$d1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    fi
    if ((rc != 0)); then
        log "$tool run $run failed (exit $rc): $(show_cmd)"
        cat "$WORKDIR/cmd.err" >&2
        tail -5 "$NGX/error.log" >&2
        exit 1
    fi
    read -r t_wall t_user t_sys <"$WORKDIR/time.txt"
    size=$(stat -c %s "$UPFILE" 2>/dev/null || echo missing)
    [[ $size == "$SIZE" ]] || die "$tool run $run: uploaded file has $size bytes, expected $SIZE"
    if [[ $check_hash == 1 ]]; then
        sha=$(sha256sum "$UPFILE" | cut -d' ' -f1)
        [[ $sha == "$SRC_SHA" ]] || die "$tool run $run: uploaded SHA-256 $sha differs from the source's $SRC_SHA"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$run" "$t_wall" "$t_user" "$t_sys" "$t_daemon" >>"$RESULTS"
    printf '  run %d  %-6s %8.3f s wall  (user %s s, sys %s s, ferryd %s s)\n' \
        "$run" "$tool" "$t_wall" "$t_user" "$t_sys" "$t_daemon" >&2
    rm -f "$UPFILE"
}

echo "## Upload to nginx (PUT)"
echo
echo "nginx ngx_http_dav_module on 127.0.0.1, no fsync; $RUNS runs per tool."
echo
echo "Commands:"
echo
for tool in "${TOOLS[@]}"; do
    set_cmd "$tool"
    echo "    $tool: $(show_cmd)"
done
echo
# One untimed upload first: without it, run 1 was consistently ~1 s slower at 1 GiB (the first
# GiB of fresh page cache for nginx's file), which would land on whichever tool goes first.
TIMEFORMAT='%3R'
{ time curl -sS -f -o /dev/null -T "$SRC/file.bin" "$BASE_URL/warmup.bin"; } 2>"$WORKDIR/time.txt" ||
    die "the warm-up upload failed: $(cat "$WORKDIR/time.txt")"
log "warm-up: one curl upload, not counted: $(tail -1 "$WORKDIR/time.txt") s wall"
rm -f "$UP/warmup.bin"
sync
log "uploading (load $(cut -d' ' -f1-3 /proc/loadavg))"
n=${#TOOLS[@]}
for ((r = 1; r <= RUNS; r++)); do
    for ((i = 0; i < n; i++)); do
        k=$(((i + r - 1) % n))
        timed_run "${TOOLS[k]}" "$r" $((r == 1 ? 1 : 0))
    done
done
python3 - "$RESULTS" "$SIZE" <<'PY'
import statistics, sys
path, size = sys.argv[1], int(sys.argv[2])
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
tools, runs = [], {}
for tool, run, wall, user, sys_, daemon in rows:
    if tool not in runs:
        tools.append(tool)
        runs[tool] = []
    runs[tool].append((int(run), float(wall), float(user), float(sys_),
                       None if daemon == "-" else float(daemon)))
med = {t: statistics.median(r[1] for r in runs[t]) for t in tools}

def daemon_cpu(t):
    ds = [r[4] for r in runs[t] if r[4] is not None]
    return f"{statistics.median(ds):.2f}" if ds else "-"

print("| tool | median s | MB/s | min s | max s | CPU user s | CPU sys s | ferryd CPU s | ÷ curl |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in tools:
    ws = [r[1] for r in runs[t]]
    ratio = f"{med[t] / med['curl']:.2f}" if "curl" in med else "-"
    print(f"| {t} | {med[t]:.3f} | {size / med[t] / 1e6:.0f} | {min(ws):.3f} | {max(ws):.3f} "
          f"| {statistics.median(r[2] for r in runs[t]):.2f} "
          f"| {statistics.median(r[3] for r in runs[t]):.2f} "
          f"| {daemon_cpu(t)} | {ratio} |")
print()
print("Wall seconds per run (run order rotates by one tool each run):")
print()
n = max(len(v) for v in runs.values())
print("| run | " + " | ".join(tools) + " |")
print("|---|" + "---:|" * len(tools))
for i in range(n):
    cells = []
    for t in tools:
        w = [r[1] for r in runs[t] if r[0] == i + 1]
        cells.append(f"{w[0]:.3f}" if w else "-")
    print(f"| {i + 1} | " + " | ".join(cells) + " |")
print()
if "ferry" in med and "curl" in med:
    r = med["ferry"] / med["curl"]
    print(f"- target ferry put ≤ 1.2× curl -T: ferry/curl = {r:.2f} → {'MET' if r <= 1.2 else 'MISSED'}")
    print()
PY
log "done (load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
