#!/usr/bin/env bash
# The whole test suite as `make test` runs it: two pytest processes at once, the shards of tests/shards.py.
#   heavy  real QEMU guests, the harness's libvirtd hosts and namespaces, the Samba AD DC (one test at a time)
#   light  everything else (unit, Postgres/Redis, test-driver hosts, the browser), niced so that the guests of the
#          heavy shard, which is the longer one, get the CPU first
# Each shard has its own Redis DBs; Postgres databases are per process anyway (tests/harness/postgres.py). Output is
# streamed with a [shard] prefix and kept in $VDI_TEST_LOG_DIR/<shard>.log. Fails when a shard fails, when a shard
# ran no tests (pytest's exit code 5), or when the shards do not partition the whole collection (a test in no shard
# or in two, a file split between them). Extra arguments go to every shard's pytest (e.g. -x, -k expr).
#   PY=.venv/bin/python  VDI_TEST_LOG_DIR=<dir>  VDI_TEST_LIGHT_NICE=5  VDI_TEST_SHARDS="heavy light"
set -uo pipefail
cd "$(dirname "$0")/.."
{  # read whole before running: editing this file during a run must not change the run

PY=${PY:-.venv/bin/python}
SHARDS=(${VDI_TEST_SHARDS:-heavy light})
LOGS=${VDI_TEST_LOG_DIR:-$(mktemp -d /tmp/vdi-test-run.XXXXXX)}
mkdir -p "$LOGS"
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

declare -A REDIS_DB=([heavy]=12 [light]=11) CRASH_REDIS_DB=([heavy]=14 [light]=13)
declare -A NICE=([heavy]=0 [light]=${VDI_TEST_LIGHT_NICE:-5})
for shard in "${SHARDS[@]}"; do
    [ -n "${REDIS_DB[$shard]:-}" ] || { echo "[run-tests] no shard '$shard' (tests/shards.py: heavy light)" >&2
                                        exit 2; }
done
declare -A PID START END RC
TAILS=()

# A terminal's Ctrl-C reaches every process of the group, the shards too; a TERM (CI cancelling the job) reaches us
# only and goes on to the shards as an interrupt. Either way each pytest runs its teardowns (guests, namespaces,
# databases) and we wait for that. (env --default-signal: a background job of a script starts with SIGINT ignored.)
stop_all() {
    echo "[run-tests] $1: stopping the shards" >&2
    if [ "$1" = TERM ]; then for shard in "${SHARDS[@]}"; do kill -INT "${PID[$shard]:-}" 2>/dev/null; done; fi
    wait
    exit 130
}
trap 'stop_all INT' INT
trap 'stop_all TERM' TERM

echo "[run-tests] shards: ${SHARDS[*]}; logs in $LOGS"
# The whole collection, for the partition check at the end (runs beside the shards' own collection).
COLLECT_PID=""
if [ "${SHARDS[*]}" = "heavy light" ]; then
    "${PYTEST[@]}" --collect-only --shard-list="$LOGS/all.ids" "$@" >"$LOGS/collect.log" 2>&1 </dev/null &
    COLLECT_PID=$!
fi
for shard in "${SHARDS[@]}"; do
    : >"$LOGS/$shard.log"
    START[$shard]=$(date +%s)
    PYTHONUNBUFFERED=1 VDI_TEST_REDIS_URL="redis://127.0.0.1:6379/${REDIS_DB[$shard]}" \
    VDI_TEST_CRASH_REDIS_URL="redis://127.0.0.1:6379/${CRASH_REDIS_DB[$shard]}" \
        env --default-signal=INT nice -n "${NICE[$shard]}" \
        "${PYTEST[@]}" --shard="$shard" --shard-list="$LOGS/$shard.ids" --durations=30 "$@" \
        >"$LOGS/$shard.log" 2>&1 </dev/null &
    PID[$shard]=$!
    tail -n +1 -F --pid="${PID[$shard]}" "$LOGS/$shard.log" 2>/dev/null | sed -u "s/^/[$shard] /" &
    TAILS+=($!)
done

# Wait for the shards in the order they finish, noting each one's exit code and wall time.
declare -A SHARD_OF
for shard in "${SHARDS[@]}"; do SHARD_OF[${PID[$shard]}]=$shard; done
while ((${#SHARD_OF[@]})); do
    finished=""
    wait -n -p finished "${!SHARD_OF[@]}"; rc=$?
    [ -n "$finished" ] || continue
    shard=${SHARD_OF[$finished]}; unset "SHARD_OF[$finished]"
    RC[$shard]=$rc; END[$shard]=$(date +%s)
    echo "[run-tests] shard $shard finished: exit $rc after $((END[$shard] - START[$shard])) s"
done
collect_rc=0
[ -z "$COLLECT_PID" ] || { wait "$COLLECT_PID"; collect_rc=$?; }
wait "${TAILS[@]}" 2>/dev/null

failed=0
echo
echo "================================ test shards ================================"
for shard in "${SHARDS[@]}"; do
    rc=${RC[$shard]}
    case $rc in
        0) verdict="passed" ;;
        5) verdict="FAILED: no tests ran"; failed=1 ;;
        *) verdict="FAILED (pytest exit $rc)"; failed=1 ;;
    esac
    echo "--- $shard: $verdict, $((END[$shard] - START[$shard])) s wall, log $LOGS/$shard.log"
    sed -n '/short test summary info/,$p' "$LOGS/$shard.log"
    grep -q 'short test summary info' "$LOGS/$shard.log" || tail -n 1 "$LOGS/$shard.log"
done

# The partition: every collected test in exactly one shard, no file in two.
if [ -z "$COLLECT_PID" ]; then
    echo "--- partition: not checked (VDI_TEST_SHARDS=${SHARDS[*]} runs part of the suite)"
elif [ "$collect_rc" != 0 ] || [ ! -s "$LOGS/all.ids" ]; then
    echo "--- partition: FAILED, the whole collection did not succeed (exit $collect_rc):"
    tail -n 30 "$LOGS/collect.log"
    failed=1
else
    sort "$LOGS/all.ids" >"$LOGS/all.sorted"
    cat "$LOGS/heavy.ids" "$LOGS/light.ids" 2>/dev/null | sort >"$LOGS/shards.sorted"
    missing=$(comm -23 "$LOGS/all.sorted" "$LOGS/shards.sorted" | sort -u)
    twice=$(comm -12 <(sort -u "$LOGS/heavy.ids" 2>/dev/null) <(sort -u "$LOGS/light.ids" 2>/dev/null))
    extra=$(comm -13 "$LOGS/all.sorted" <(sort -u "$LOGS/shards.sorted"))
    split=$(comm -12 <(sed 's/::.*//' "$LOGS/heavy.ids" 2>/dev/null | sort -u) \
                     <(sed 's/::.*//' "$LOGS/light.ids" 2>/dev/null | sort -u))
    if [ -n "$missing$twice$extra$split" ]; then
        failed=1
        echo "--- partition: FAILED (tests/shards.py)"
        [ -n "$missing" ] && echo "in no shard:" && echo "$missing" | head -n 50
        [ -n "$twice" ] && echo "in both shards:" && echo "$twice" | head -n 50
        [ -n "$extra" ] && echo "run by a shard but not in the whole collection:" && echo "$extra" | head -n 50
        [ -n "$split" ] && echo "files split between the shards:" && echo "$split"
    else
        echo "--- partition: ok, $(wc -l <"$LOGS/all.ids") tests = $(wc -l <"$LOGS/heavy.ids") heavy" \
             "+ $(wc -l <"$LOGS/light.ids") light"
    fi
fi
exit $failed
}
