#!/usr/bin/env bash
# CI for parpool-mpi, called from .ci/run (and runnable alone from any directory).
#
# With CI=true it installs Open MPI and libclang when they are missing (apt-get update once,
# then apt-get install -y); otherwise it names the missing packages and stops. Then it
# lints, runs the tests as a one-rank job and under `mpirun -np 1`, `2` and `4`
# (oversubscribed), checks that a dead rank ends the job, runs the example on 1, 2 and 4
# ranks, and runs the tests across two "hosts" (network namespaces) where `ip netns` works.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n==> parpool-mpi: %s\n' "$*"; }

step "Open MPI and libclang"
packages=(libopenmpi-dev openmpi-bin libclang1-14 libclang-common-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CI:-}" != true ]; then
    echo "missing: ${missing[*]}; install with:"
    echo "  apt-get install -y --no-install-recommends ${missing[*]}"
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
mpirun --version | head -1
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

step "clippy"
cargo clippy -p parpool-mpi --all-targets -- -D warnings

step "cargo doc (broken intra-doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p parpool-mpi

step "cargo test -p parpool-mpi (one rank: unit, doc and rank tests)"
# One test at a time: two MPI singletons starting at once race on Open MPI's session
# directory ("mkdir ... File exists").
cargo test --release -p parpool-mpi -- --test-threads=1 2>&1 | tee target/mpi-test.out
ranks=$(sed -n 's/.*Running tests\/ranks.rs (\(.*\))$/\1/p' target/mpi-test.out)
test -x "$ranks"

# Every rank checks its results against sequential code; a failed check fails the job.
# mpi_yield_when_idle: a waiting rank yields its core instead of spinning, which on a shared
# CI machine took the 2-rank run from 19.5 s to 1.8 s.
yield=(--mca mpi_yield_when_idle 1)
mpi=(timeout 600 mpirun --oversubscribe --bind-to none "${yield[@]}")
for np in 1 2 4; do
  step "tests on $np ranks"
  "${mpi[@]}" -np "$np" "$ranks" | tee target/mpi-ranks.out
  grep -q "checks passed on $np ranks" target/mpi-ranks.out
done

step "a rank that dies ends the job (no hang)"
set +e
timeout 120 mpirun --oversubscribe --bind-to none "${yield[@]}" -np 2 "$ranks" --die >target/mpi-die.out 2>&1
status=$?
set -e
if [ "$status" = 0 ] || [ "$status" = 124 ]; then
  cat target/mpi-die.out
  echo "expected the job to fail, got status $status"
  exit 1
fi
echo "the job failed with status $status, as it should"

step "mandelbrot_mpi on 1, 2 and 4 ranks"
cargo build --release -p parpool-mpi --example mandelbrot_mpi
for np in 1 2 4; do
  "${mpi[@]}" -np "$np" target/release/examples/mandelbrot_mpi --width 320 --height 240 \
    --iterations 200 --threads 1 --output target/mandelbrot_mpi.pgm --check | tee target/mpi-m.out
  grep -q "image verified" target/mpi-m.out
done

step "two hosts: the tests over TCP between two network namespaces"
ns_a="ppa$$" ns_b="ppb$$"
if ip netns add "$ns_a" 2>/dev/null; then
  agent=$(mktemp)
  cleanup() { ip netns del "$ns_a" 2>/dev/null || true; ip netns del "$ns_b" 2>/dev/null || true; rm -f "$agent"; }
  trap cleanup EXIT
  ip netns add "$ns_b"
  ip link add "va$$" type veth peer name "vb$$"
  ip link set "va$$" netns "$ns_a"
  ip link set "vb$$" netns "$ns_b"
  ip -n "$ns_a" addr add 10.116.0.1/24 dev "va$$"
  ip -n "$ns_b" addr add 10.116.0.2/24 dev "vb$$"
  for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
  ip -n "$ns_a" link set "va$$" up
  ip -n "$ns_b" link set "vb$$" up
  # mpirun's "ssh" to the second host: a shell in namespace B under its own hostname.
  cat >"$agent" <<AGENT
#!/bin/sh
shift
exec ip netns exec $ns_b unshare --uts sh -c 'hostname host-b; eval "\$1"' agent "\$*"
AGENT
  chmod +x "$agent"
  printf '10.116.0.1 slots=1\n10.116.0.2 slots=1\n' >target/mpi-hosts
  ip netns exec "$ns_a" unshare --uts sh -c 'hostname host-a; exec "$@"' sh \
    timeout 600 mpirun --hostfile target/mpi-hosts -np 2 --bind-to none "${yield[@]}" \
    --mca plm_rsh_agent "$agent" --mca btl tcp,self \
    --mca oob_tcp_if_include 10.116.0.0/24 --mca btl_tcp_if_include 10.116.0.0/24 \
    "$ranks" | tee target/mpi-ranks.out
  grep -q "checks passed on 2 ranks" target/mpi-ranks.out
  cleanup
  trap - EXIT
else
  echo "skipped: this machine does not allow 'ip netns add' (needs root and CAP_SYS_ADMIN)"
fi

step "bench builds"
cargo bench -p parpool-mpi --no-run

echo
echo "parpool-mpi CI passed in $((SECONDS - started)) s"
