# Shared by bench/download.sh, bench/daemon.sh and bench/upload.sh: messages, tool
# installation, the scratch folder, stopping processes by pid, and the machine description.
# Source it; it defines functions and sets nothing else.

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# install_tools [EXTRA_PACKAGE…]: installs nginx-light, aria2, curl and the extras (Debian
# package names) that are missing, with apt-get; sets NGINX to nginx's path.
install_tools() {
    local need=() extra
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
    command -v aria2c >/dev/null 2>&1 || need+=(aria2)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    need+=("$@")
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        local sudo=()
        [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    command -v python3 >/dev/null 2>&1 || die "python3 is needed"
    for extra in "$HOME/.curlrc" "$HOME/.aria2/aria2.conf"; do
        [[ -e $extra ]] && log "warning: $extra exists and changes curl/aria2c's behaviour"
    done
    return 0
}

# make_workdir PREFIX: WORKDIR as given (created if missing) or a new /var/tmp/PREFIX.XXXXXX;
# sets made_workdir=1 when this script created it; refuses tmpfs (it would hide the disk).
make_workdir() {
    made_workdir=0
    if [[ -z ${WORKDIR:-} ]]; then
        WORKDIR=$(mktemp -d "/var/tmp/$1.XXXXXX")
        made_workdir=1
    elif [[ ! -d $WORKDIR ]]; then
        mkdir -p "$WORKDIR"
        made_workdir=1
    fi
    WORKDIR=$(cd "$WORKDIR" && pwd)
    local fstype
    fstype=$(df -T "$WORKDIR" | awk 'NR == 2 { print $2 }')
    if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
        die "WORKDIR $WORKDIR is on $fstype; pick a folder on a real disk"
    fi
}

# stop_pid PID NAME [TENTHS]: TERM, wait up to TENTHS/10 s (default 10 s), then KILL; only
# this pid.
stop_pid() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < ${3:-100}; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && { log "$2 ($pid) ignored SIGTERM; killing it"; kill -KILL "$pid" 2>/dev/null || true; }
    wait "$pid" 2>/dev/null || true
}

# print_machine TITLE NGINX_NOTE: the markdown header both benchmarks start with; the caller
# prints its own lines after it.
print_machine() {
    local rev blockdev rota
    rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$REPO" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        rev="$rev (+ uncommitted changes in crates/)"
    fi
    blockdev=$(df --output=source "$WORKDIR" | awk 'NR == 2 { sub("/dev/", ""); print }')
    rota=$(cat "/sys/block/$blockdev/queue/rotational" 2>/dev/null || echo "?")
    echo "# $1"
    echo
    echo "## Machine"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- nproc: $(nproc)"
    echo "- kernel: $(uname -r)"
    echo "- CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
    echo "- memory: $(free -h | awk '/^Mem:/ { print $2 " total, " $7 " available" }')"
    echo "- disk: $(df -T "$WORKDIR" | awk 'NR == 2 { print $1 " " $2 }') (rotational=$rota), WORKDIR=$WORKDIR"
    echo "- curl: $(curl --version | head -1)"
    echo "- aria2c: $(aria2c --version | head -1)"
    echo "- nginx: $("$NGINX" -v 2>&1) ($2)"
    echo "- ferry: git $rev (cargo --release)"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}
