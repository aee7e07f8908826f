# Shared by bench/download.sh, bench/daemon.sh and bench/upload.sh: messages, tool
# installation, the scratch folder, a private nginx, stopping processes by pid, and the
# machine description.
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

# free_port: a free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_nginx NGX CONNECTIONS HTTP_DIRECTIVES SERVER_DIRECTIVES: writes NGX/nginx.conf — one
# worker, everything (pid, logs, temp folders) under NGX, the given `http` directives and one
# server on 127.0.0.1:$NGINX_PORT (a free port, set here) with the given directives — checks
# it, starts nginx in the background and sets NGINX_PID. Wait for it with nginx_ready.
start_nginx() {
    local ngx=$1 connections=$2 http=$3 server=$4
    NGINX_PORT=$(free_port)
    mkdir -p "$ngx"/{body,proxy,fastcgi,uwsgi,scgi}
    cat >"$ngx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections $connections; }
http {
    client_body_temp_path $ngx/body;
    proxy_temp_path $ngx/proxy;
    fastcgi_temp_path $ngx/fastcgi;
    uwsgi_temp_path $ngx/uwsgi;
    scgi_temp_path $ngx/scgi;
    default_type application/octet-stream;
$http
    server {
        listen 127.0.0.1:$NGINX_PORT;
$server
    }
}
CONF
    "$NGINX" -e "$ngx/error.log" -p "$ngx" -c "$ngx/nginx.conf" -t -q || die "nginx rejected $ngx/nginx.conf"
    "$NGINX" -e "$ngx/error.log" -p "$ngx" -c "$ngx/nginx.conf" &
    NGINX_PID=$!
}

# nginx_ready NGX COMMAND…: runs COMMAND (a probe request) every 0.1 s until it succeeds;
# dies after 10 s or when nginx has exited.
nginx_ready() {
    local ngx=$1 i
    shift
    for ((i = 0; ; i++)); do
        "$@" && return 0
        ((i < 100)) || die "nginx did not answer on 127.0.0.1:$NGINX_PORT (see $ngx/error.log)"
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$ngx/error.log")"
        sleep 0.1
    done
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
