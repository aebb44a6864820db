# The soak (POSIX sh: bash on the host, busybox sh in the qemu guest).
# tests/soak/run sources it and calls soak_main; so does scenario 12 of
# tests/vm/scenarios.sh in the guest. It drives one Augur device (a FUSE
# daemon's disk.img, or a ublk device) with fio verify jobs and augur stamp
# while, at seeded random moments, it loads the host, switches the policy,
# swaps models, fails and replaces replicas, and kills the daemon with
# SIGKILL (ublk: --recover under running I/O; FUSE: a restart between jobs).
#
# Prints `CHECK <name> ok` or `CHECK <name> FAIL <reason>` per check,
# `SOAK t=<s> <step> (<ms> ms)` per step, diagnostics indented with "|".
#
# Settings (environment): SOAK_FRONTEND fuse|ublk, SOAK_MINUTES, SOAK_SEED,
# SOAK_DIR (work directory, emptied), SOAK_SIZE_MB (device size), SOAK_ROUND_S
# (seconds per round), SOAK_MODEL2 (a second model file to swap in),
# SOAK_ID (ublk device id), SOAK_STALL_AFTER (the daemon's --stall-after,
# default 5), AUGUR (the binary, default augur).

# sk_rand N: sets R to a number in [0, N) from the seeded LCG in SK_RNG (the
# same sequence in every shell with 64-bit arithmetic).
sk_rand() {
  SK_RNG=$(((SK_RNG * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff))
  R=$(((SK_RNG >> 17) % $1))
}
# sk_pick WORDS...: sets P to one of the words.
sk_pick() {
  sk_rand $#
  shift "$R"
  P=$1
}
sk_now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
sk_t() { echo "$((($(sk_now_ms) - SK_T0) / 1000))"; }
sk_ok() { echo "CHECK $1 ok"; }
sk_fail() {
  _n=$1
  shift
  echo "CHECK $_n FAIL $*"
  SK_FAILED=$((SK_FAILED + 1))
}
sk_show() { [ -s "$1" ] && tail -n "${2:-8}" "$1" | sed 's/^/    | /'; }
# sk_step NAME CMD...: runs CMD, logs its time; returns its status.
sk_step() {
  _name=$1
  shift
  _s=$(sk_now_ms)
  "$@" >>"$SK_D/steps.log" 2>&1
  _rc=$?
  echo "SOAK t=$(sk_t) $_name ($(($(sk_now_ms) - _s)) ms)$([ $_rc = 0 ] || echo ", exit $_rc")"
  return $_rc
}
sk_alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
}
# sk_ctl ARGS: augur ctl for the soak's daemon. Exit 1 with "degraded" on
# stderr is a reply that also says a replica is out (expected here): 0.
sk_ctl() {
  if [ "$SOAK_FRONTEND" = ublk ]; then
    timeout 60 "$AUGUR" ctl --id "$SOAK_ID" "$@" 2>"$SK_D/ctl.err"
  else
    timeout 60 "$AUGUR" ctl "$@" 2>"$SK_D/ctl.err"
  fi
  _crc=$?
  cat "$SK_D/ctl.err" >&2
  [ $_crc = 1 ] && grep -q degraded "$SK_D/ctl.err" && _crc=0
  return $_crc
}

# sk_replica_args: the --replica flags of the current members.
sk_replica_args() {
  _i=0
  SK_RARGS=
  while [ $_i -lt 3 ]; do
    eval "SK_RARGS=\"\$SK_RARGS --replica \$SK_SPEC$_i\""
    _i=$((_i + 1))
  done
}

# sk_start [--recover]: starts the daemon and waits for its device. Sets
# SK_PID and SK_DEV; logs to daemon.N.log. A replica failed before the kill
# missed writes: it comes back with --resync-stale, as an operator would
# bring it back, and is brought up to date in the background.
sk_start() {
  if [ -n "$SK_FAILED_REPLICA" ]; then
    set -- "$@" --resync-stale
    SK_FAILED_REPLICA=
  fi
  SK_STARTS=$((SK_STARTS + 1))
  _log=$SK_D/daemon.$SK_STARTS.log
  sk_replica_args
  _s=$(sk_now_ms)
  # shellcheck disable=SC2086
  if [ "$SOAK_FRONTEND" = ublk ]; then
    # --recover takes the geometry from the device.
    case " $* " in
      *" --recover "*) _geo= ;;
      *) _geo="--size ${SOAK_SIZE_MB}M --block-size 512 --depth 128" ;;
    esac
    "$AUGUR" serve --id "$SOAK_ID" $SK_RARGS $_geo --policy "$SK_POLICY" --stall-after "$SOAK_STALL_AFTER" "$@" \
      >"$_log.out" 2>"$_log" &
  else
    "$AUGUR" fuse --mount "$SK_D/mnt" $SK_RARGS --size "${SOAK_SIZE_MB}M" \
      --policy "$SK_POLICY" --stall-after "$SOAK_STALL_AFTER" "$@" >"$_log.out" 2>"$_log" &
  fi
  SK_PID=$!
  _w=0
  while [ $_w -lt 600 ]; do
    _first=$(head -n1 "$_log.out" 2>/dev/null)
    if [ "$SOAK_FRONTEND" = ublk ]; then
      SK_DEV=$_first
      [ -n "$SK_DEV" ] && [ -b "$SK_DEV" ] && break
    else
      SK_DEV=$SK_D/mnt/disk.img
      [ -n "$_first" ] && [ -f "$SK_DEV" ] && break
    fi
    if ! sk_alive "$SK_PID"; then
      echo "    | the daemon exited before its device was up:"
      sk_show "$_log"
      return 1
    fi
    sleep 0.1
    _w=$((_w + 1))
  done
  [ $_w -lt 600 ] || {
    echo "    | no device after 60 s"
    sk_show "$_log"
    return 1
  }
  echo "SOAK t=$(sk_t) daemon start $SK_STARTS $* pid $SK_PID ($(($(sk_now_ms) - _s)) ms)"
  # The daemon keeps itself out of the OOM killer's reach (the soak's
  # memory pressure once had the guest's OOM killer choose it).
  # Without CAP_SYS_RESOURCE (containers may withhold it from root) the
  # daemon can only say it could not.
  _adj=$(cat "/proc/$SK_PID/oom_score_adj" 2>/dev/null)
  _cap=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
  if [ $(((0x${_cap:-0} >> 24) & 1)) = 0 ]; then
    if ! grep -q 'cannot set /proc/self/oom_score_adj' "$_log"; then
      sk_fail daemon-oom-protected "daemon start $SK_STARTS: no CAP_SYS_RESOURCE, oom_score_adj '$_adj' and no warning"
    elif [ $SK_STARTS = 1 ]; then
      sk_ok daemon-oom-protected
      echo "    | no CAP_SYS_RESOURCE here: the daemon warned that it keeps oom_score_adj $_adj"
    fi
  elif [ "$_adj" != -1000 ]; then
    sk_fail daemon-oom-protected "daemon start $SK_STARTS: oom_score_adj is '$_adj', not -1000"
  elif [ $SK_STARTS = 1 ]; then
    sk_ok daemon-oom-protected
  fi
}

# sk_died: the daemon exited when nothing stopped it (the OOM killer, a
# crash): a failure, with the kernel's word on it.
sk_died() {
  sk_fail daemon-died "daemon pid $SK_PID (start $SK_STARTS) exited on its own"
  dmesg 2>/dev/null | grep -iE 'out of memory|killed process|segfault' | tail -n 3 | sed 's/^/    | /'
  sk_show "$SK_D/daemon.$SK_STARTS.log" 3
}

# sk_kill: SIGKILL the daemon (FUSE: and detach its mount).
sk_kill() {
  _s=$(sk_now_ms)
  sk_alive "$SK_PID" || sk_died
  kill -9 "$SK_PID" 2>/dev/null
  wait "$SK_PID" 2>/dev/null
  [ "$SOAK_FRONTEND" = fuse ] && { fusermount3 -uz "$SK_D/mnt" 2>/dev/null || umount -l "$SK_D/mnt" 2>/dev/null; }
  echo "SOAK t=$(sk_t) daemon kill -9 pid $SK_PID ($(($(sk_now_ms) - _s)) ms)"
}

# sk_stop: SIGTERM; the daemon must exit 0 within 60 s.
sk_stop() {
  _s=$(sk_now_ms)
  kill -TERM "$SK_PID" 2>/dev/null
  _w=0
  while sk_alive "$SK_PID" && [ $_w -lt 600 ]; do
    sleep 0.1
    _w=$((_w + 1))
  done
  if sk_alive "$SK_PID"; then
    kill -9 "$SK_PID"
    wait "$SK_PID" 2>/dev/null
    SK_STOP_WHY="still running 60 s after SIGTERM"
    return 1
  fi
  wait "$SK_PID"
  _rc=$?
  echo "SOAK t=$(sk_t) daemon stop pid $SK_PID exit $_rc ($(($(sk_now_ms) - _s)) ms)"
  [ $_rc = 0 ] || SK_STOP_WHY="exit $_rc on SIGTERM: $(tail -n1 "$SK_D/daemon.$SK_STARTS.log")"
  [ $_rc = 0 ]
}

# sk_load_start SECONDS: CPU hogs on every core, memory pressure and I/O on
# another file system, for SECONDS (stress-ng when present, else sh loops).
sk_load_start() {
  if command -v stress-ng >/dev/null; then
    stress-ng --cpu 0 --vm 1 --vm-bytes "${SOAK_LOAD_VM_MB:-256}M" --hdd 1 --hdd-bytes 64M \
      --temp-path "$SK_D/load" --timeout "$1" --quiet >>"$SK_D/load.log" 2>&1 &
  else
    (
      _end=$(($(sk_now_ms) + $1 * 1000))
      for _c in $(seq "$(grep -c ^processor /proc/cpuinfo)"); do
        (while [ "$(sk_now_ms)" -lt "$_end" ]; do :; done) &
      done
      while [ "$(sk_now_ms)" -lt "$_end" ]; do
        dd if=/dev/zero of="$SK_D/load/hog" bs=1M count=32 conv=fsync 2>/dev/null
      done
      wait
    ) &
  fi
  echo "SOAK t=$(sk_t) load on for $1 s (pid $!)"
}

# sk_action: one seeded fault or change (run from the round's schedule).
sk_action() {
  sk_pick policy policy model load load fail replace kill
  case $P in
    policy)
      sk_pick primary least-pending augur random hedge linnos linnos+hedge
      SK_POLICY=$P
      sk_step "policy $P" sk_ctl policy set "$P" || SK_CTL_ERR="policy $P"
      ;;
    model)
      if [ -n "${SOAK_MODEL2:-}" ]; then sk_pick default "$SOAK_MODEL2"; else P=default; fi
      sk_step "model load $P" sk_ctl model load "$P" || SK_CTL_ERR="model load $P"
      ;;
    load)
      sk_rand 15
      sk_load_start $((R + 5))
      ;;
    fail)
      if [ -z "$SK_FAILED_REPLICA" ]; then
        sk_rand 3
        SK_FAILED_REPLICA=$R
        sk_step "replica fail $R" sk_ctl replica fail "$R" || SK_CTL_ERR="replica fail $R"
      fi
      ;;
    replace) sk_replace ;;
    kill)
      # ublk: under running I/O, which waits in the kernel for --recover.
      if [ "$SOAK_FRONTEND" = ublk ]; then
        sk_kill
        sleep 0.5
        if ! sk_start --recover; then
          SK_RECOVER_ERR="recovery failed at t=$(sk_t)"
          # The device's I/O waits for a daemon that will not come: end it.
          timeout 60 "$AUGUR" stop --id "$SOAK_ID" >>"$SK_D/steps.log" 2>&1
          kill -9 "$SK_FIO" 2>/dev/null
        fi
      else
        SK_KILL_AFTER=1
      fi
      ;;
  esac
}

# sk_replace: the failed replica (if any) is replaced by a new file, rebuilt
# while the device serves.
sk_replace() {
  [ -n "$SK_FAILED_REPLICA" ] || return 0
  SK_GEN=$((SK_GEN + 1))
  _new=$SK_D/r$SK_FAILED_REPLICA.g$SK_GEN.img
  eval "_old=\$SK_SPEC$SK_FAILED_REPLICA"
  if sk_step "replica replace $SK_FAILED_REPLICA $_new" sk_ctl replica replace "$SK_FAILED_REPLICA" "$_new"; then
    eval "SK_SPEC$SK_FAILED_REPLICA=\$_new"
    # The replaced file goes, as an operator's would (in the guest the
    # replicas are in RAM; its space returns once the daemon lets go).
    rm -f "${_old##*:}" "${_old##*:}.augur-meta"
    SK_FAILED_REPLICA=
  else
    SK_CTL_ERR="replica replace $SK_FAILED_REPLICA"
  fi
}

# sk_fio ROUND LOG: one seeded verify job set on the device for SOAK_ROUND_S.
# serialize_overlap: once a job's random map is used up (time_based), fio
# may put a write in flight over one still in flight, whose order no block
# device promises; fio then reports a verify failure that is its own (seen
# with 4 jobs x 12M, 64k-1m blocks, depth 32: more tags than blocks).
sk_fio() {
  sk_pick 512-4k 4k-64k 64k-1m 512-1m 4k-256k
  _bs=$P
  sk_pick 1 4 16 32 64 128
  _qd=$P
  sk_rand 4
  _jobs=$((R + 1))
  _region=$((SOAK_SIZE_MB / 2 / _jobs))
  echo "SOAK t=$(sk_t) round $1 fio randwrite+verify bs=$_bs iodepth=$_qd jobs=$_jobs x ${_region}M, randread bs=$_bs ($(awk '/^MemAvailable/ { printf "%d", $2 / 1024 }' /proc/meminfo) MiB available)"
  fio --output="$2" --eta=never --verify_state_save=0 --filename="$SK_DEV" --ioengine="$SK_FIO_ENGINE" --direct=1 \
    --time_based --runtime="$SOAK_ROUND_S" --randrepeat=0 --exitall_on_error \
    --name=w --rw=randwrite --bsrange="$_bs" --iodepth="$_qd" --numjobs="$_jobs" \
    --size="${_region}M" --offset_increment="${_region}M" --serialize_overlap=1 \
    --verify=crc32c --verify_backlog=64 --verify_fatal=1 \
    --name=r --rw=randread --bsrange="$_bs" --iodepth="$_qd" --size="$((SOAK_SIZE_MB / 2))M" &
  SK_FIO=$!
}

soak_main() {
  SK_D=$SOAK_DIR
  AUGUR=${AUGUR:-augur}
  SOAK_STALL_AFTER=${SOAK_STALL_AFTER:-5}
  SOAK_ID=${SOAK_ID:-12}
  SK_FAILED=0
  SK_RNG=$SOAK_SEED
  SK_T0=$(sk_now_ms)
  SK_STARTS=0
  SK_GEN=0
  SK_FAILED_REPLICA=
  SK_POLICY=linnos+hedge
  SK_FIO_ENGINE=io_uring
  rm -rf "$SK_D"
  mkdir -p "$SK_D/mnt" "$SK_D/load"
  SK_SPEC0=$SK_D/r0.img
  SK_SPEC1=emu:gc-heavy:$SK_D/r1.img
  SK_SPEC2=emu:noisy-neighbor:$SK_D/r2.img
  # Rounds start until SOAK_MINUTES of wall time have passed (at least one).
  sk_end_ms=$((SK_T0 + SOAK_MINUTES * 60000))
  echo "SOAK seed $SOAK_SEED: rounds of $SOAK_ROUND_S s for $SOAK_MINUTES min on $SOAK_FRONTEND, ${SOAK_SIZE_MB} MiB (replay: --seed $SOAK_SEED)"
  if ! sk_start; then
    sk_fail soak-start "the daemon did not come up"
    return
  fi
  half=$((SOAK_SIZE_MB / 2 * 1048576))
  k=1
  while [ $k = 1 ] || [ "$(sk_now_ms)" -lt "$sk_end_ms" ]; do
    SK_KILL_AFTER=0
    SK_CTL_ERR=
    SK_RECOVER_ERR=
    sk_fio $k "$SK_D/fio.$k.log"
    "$AUGUR" stamp write --dev "$SK_DEV" --log "$SK_D/stamp.log" --offset "$half" --len "$half" \
      --threads 4 --seed "$((SOAK_SEED + k))" --duration "$((SOAK_ROUND_S + 3))s" >>"$SK_D/stamp.out" 2>&1 &
    stamp=$!
    # The round's schedule: 2 to 4 actions at seeded moments.
    sk_rand 3
    n=$((R + 2))
    while [ $n -gt 0 ]; do
      sk_rand $((SOAK_ROUND_S * 1000 / (n + 1)))
      sleep "$((R / 1000)).$(printf '%03d' $((R % 1000)))"
      sk_alive "$SK_FIO" || break
      sk_action
      n=$((n - 1))
    done
    wait "$SK_FIO"
    frc=$?
    [ "$SK_KILL_AFTER" = 1 ] || sk_alive "$SK_PID" || sk_died
    # FUSE: the kill lands while augur stamp still writes (fio would only
    # report the lost mount); its acknowledged writes must survive it.
    if [ "$SK_KILL_AFTER" = 1 ]; then
      sk_kill
      wait "$stamp"
      src=$?
      [ $src = 1 ] && src=0
      sk_start || {
        sk_fail "round-$k-restart" "the daemon did not come back"
        return
      }
    else
      wait "$stamp"
      src=$?
    fi
    if [ $frc = 0 ] && ! grep -qE 'verify: bad|err= *[1-9]|io_u error' "$SK_D/fio.$k.log"; then
      sk_ok "round-$k-fio-verify"
    else
      sk_fail "round-$k-fio-verify" "fio exit $frc: $(grep -m1 -E 'verify: bad|err= *[1-9]|io_u error|fio: ' "$SK_D/fio.$k.log")"
      sk_show "$SK_D/fio.$k.log"
    fi
    [ -z "$SK_CTL_ERR" ] || sk_fail "round-$k-control" "augur ctl $SK_CTL_ERR failed: $(tail -n1 "$SK_D/steps.log")"
    if [ -n "$SK_RECOVER_ERR" ]; then
      sk_fail "round-$k-recover" "$SK_RECOVER_ERR"
      # No device is left to run rounds on: stop here (the final checks
      # report on what is left) rather than fail every later round.
      echo "SOAK t=$(sk_t) stopping the rounds: no device after the failed recovery"
      break
    fi
    # augur stamp: every acknowledged write still there (after any kill).
    if [ $src != 0 ]; then
      sk_fail "round-$k-stamp" "augur stamp write exit $src: $(tail -n1 "$SK_D/stamp.out")"
    elif "$AUGUR" stamp check --dev "$SK_DEV" --log "$SK_D/stamp.log" --offset "$half" --len "$half" \
      >>"$SK_D/stamp.out" 2>&1; then
      sk_ok "round-$k-no-lost-write"
    else
      sk_fail "round-$k-no-lost-write" "$(tail -n1 "$SK_D/stamp.out")"
    fi
    k=$((k + 1))
  done
  # The end: every replica back, rebuilt and identical.
  sk_replace
  _w=0
  # (augur ctl exits 1 while the array is degraded; the reply is there.)
  while sk_ctl --json status 2>/dev/null | tr -d ' \n' >"$SK_D/status.json"; [ -s "$SK_D/status.json" ]; do
    grep -q '"running":true' "$SK_D/status.json" || break
    [ $_w -lt 3000 ] || break
    sleep 0.2
    _w=$((_w + 1))
  done
  if grep -q '"running":true' "$SK_D/status.json"; then
    sk_fail rebuild-done "a resync or rebuild still runs after 600 s"
  fi
  sk_ctl --json stats 2>&1 | tr -d ' \n' | tr ',{' '\n\n' >"$SK_D/stats.txt"
  stalls=$(sed -n 's/^"stalls":\([0-9]*\).*/\1/p' "$SK_D/stats.txt" | head -n1)
  missed=$(sed -n 's/^"missed_wakeups":\([0-9]*\).*/\1/p' "$SK_D/stats.txt" | head -n1)
  failed_req=$(sed -n 's/^"failed_requests":\([0-9]*\).*/\1/p' "$SK_D/stats.txt" | head -n1)
  if sk_step scrub sk_ctl scrub; then sk_ok scrub-clean; else sk_fail scrub-clean "augur ctl scrub: $(tail -n2 "$SK_D/steps.log" | tr '\n' ' ')"; fi
  if sk_stop; then sk_ok daemon-stop; else sk_fail daemon-stop "$SK_STOP_WHY"; fi
  dumps=$(cat "$SK_D"/daemon.*.log | grep -c 'stall:')
  lost=$(cat "$SK_D"/daemon.*.log | grep -c 'no wake-up reported\|no eventfd wake-up')
  if [ "$dumps" = 0 ] && [ "${stalls:-x}" = 0 ]; then
    sk_ok no-stall-dumps
  else
    sk_fail no-stall-dumps "$dumps stall dump(s) in the daemon logs, stalls=${stalls:-unknown} in the last daemon's stats"
    cat "$SK_D"/daemon.*.log | grep 'stall:' | head -n 3 | cut -c1-2000 | sed 's/^/    | /'
  fi
  if [ "$lost" = 0 ] && [ "${missed:-x}" = 0 ]; then sk_ok no-missed-wakeups; else sk_fail no-missed-wakeups "$lost log line(s), missed_wakeups=${missed:-unknown}"; fi
  if [ "${failed_req:-x}" = 0 ]; then sk_ok no-failed-requests; else sk_fail no-failed-requests "failed_requests=${failed_req:-unknown} in the last daemon's stats"; fi
  same=1
  f0=${SK_SPEC0##*:}
  for s in "$SK_SPEC1" "$SK_SPEC2"; do
    cmp -s "$f0" "${s##*:}" || {
      same=0
      echo "    | ${s##*:} differs from $f0: $(cmp "$f0" "${s##*:}" 2>&1 | head -n1)"
    }
  done
  if [ $same = 1 ]; then sk_ok replicas-identical; else sk_fail replicas-identical "the replica files differ after the soak"; fi
  echo "SOAK t=$(sk_t) done: $SK_STARTS daemon start(s), seed $SOAK_SEED"
}
