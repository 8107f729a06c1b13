# Shared by the transfer benchmarks (sourced, not run). Expects $root (the
# repository), $work (a scratch directory), $bstcache and $project set,
# and an array pids=() that the caller's EXIT trap stops.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: nothing listening on port $1" >&2; return 1
}
# start_server KIND DIR: starts bst-artifact-server or serve on DIR; sets
# $port and $server_pid
start_server() {
  port=$(free_port)
  mkdir -p "$2"
  if [ "$1" = serve ]; then
    BST_CACHE_CONFIG=/dev/null "$bstcache" --format bst1 serve --listen "127.0.0.1:$port" --enable-push "$2" >"$2.log" 2>&1 &
  else
    /usr/bin/python3 "$root/scripts/bst-artifact-server" --port "$port" --enable-push "$2" >"$2.log" 2>&1 &
  fi
  pids+=($!)
  server_pid=$!
  wait_port "$port"
}
stop_server() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# bst_in HOME URL PUSH args...: bst in $project with its own XDG dirs
# under HOME and one artifact cache (none when URL is empty)
bst_in() {
  local home=$1 url=$2 push=$3; shift 3
  mkdir -p "$home/config" "$home/cache" "$home/data"
  if [ -n "$url" ]; then
    printf 'artifacts:\n- url: %s\n  push: %s\n' "$url" "$push" >"$home/config/buildstream.conf"
  else
    echo 'artifacts: []' >"$home/config/buildstream.conf"
  fi
  (cd "$project" && XDG_CONFIG_HOME="$home/config" XDG_CACHE_HOME="$home/cache" XDG_DATA_HOME="$home/data" \
    bst --no-interactive --no-colors "$@" >"$home/bst.log" 2>&1)
}

# seconds CMD...: wall time of a command
seconds() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN {print e - s}'; }
# conf FILE NAME URL PUSH [NAME URL PUSH]...: a bst-cache config, first
# cache pulled from
conf() {
  local f=$1; shift
  printf 'format = "bst1"\njobs = 8\n' >"$f"
  while [ $# -ge 3 ]; do
    printf '[[cache]]\nname = "%s"\nurl = "%s"\npush = %s\n' "$1" "$2" "$3" >>"$f"
    shift 3
  done
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# random_project DIR: 40 import elements x 60 files of random content
# (mostly small, a few MiB, some shared; about 200 MB)
random_project() {
  python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
os.makedirs(f"{root}/elements")
open(f"{root}/project.conf", "w").write("name: bench\nelement-path: elements\n")
shared = [rng.randbytes(rng.randint(1024, 65536)) for _ in range(20)]
names = []
for e in range(40):
    d = f"{root}/files/e{e:02d}"
    os.makedirs(d)
    for f in range(60):
        if f < 3:
            data = rng.randbytes(rng.randint(1, 2) << 20)          # a few MiB files
        elif f < 10:
            data = shared[rng.randrange(len(shared))]              # shared content
        else:
            data = rng.randbytes(rng.randint(512, 64 << 10))      # mostly small
        sub = f"{d}/dir{f % 6}"
        os.makedirs(sub, exist_ok=True)
        open(f"{sub}/f{f:02d}", "wb").write(data)
    open(f"{root}/elements/e{e:02d}.bst", "w").write(f"kind: import\nsources:\n- kind: local\n  path: files/e{e:02d}\n")
    names.append(f"e{e:02d}.bst")
open(f"{root}/elements.txt", "w").write("\n".join(names))
PY
}
