# The guest's scenarios (busybox sh, sourced by /init). Each prints one
# console line per check, `CHECK <name> ok` or `CHECK <name> FAIL <reason>`,
# and measurements as `MEASURE <set> key=value ...`; tests/vm/run reads them.
# Diagnostics go to the console indented with "|".

# fio's crc32c-verified random I/O at depth 16: every block written is read
# back and checked after the mixed phase (and a verify error stops fio).
FIO_VERIFY="--ioengine=io_uring --direct=1 --bs=4k --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 --exitall_on_error"
VERIFY_SIZE=24M
# Measurement runs: seconds per fio run (after 1 s of ramp) and rounds.
MEASURE_S=4
ROUNDS=2
POLICIES="primary least-pending augur random hedge linnos linnos+hedge greedy-oracle"

ok() { echo "CHECK $1 ok"; }
fail() {
  _n=$1
  shift
  echo "CHECK $_n FAIL $*"
}
# show FILE [N]: the last N lines of a log, into the console.
show() { [ -s "$1" ] && tail -n "${2:-12}" "$1" | sed 's/^/    | /'; }
# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
}
# wait_gone PID SECONDS
wait_gone() {
  _w=0
  while alive "$1" && [ "$_w" -lt "$(($2 * 10))" ]; do
    sleep 0.1
    _w=$((_w + 1))
  done
  ! alive "$1"
}
# wait_blk DEV SECONDS: the block device node exists.
wait_blk() {
  _w=0
  while [ ! -b "$1" ] && [ "$_w" -lt "$(($2 * 10))" ]; do
    sleep 0.1
    _w=$((_w + 1))
  done
  [ -b "$1" ]
}
# The ublk devices and control nodes present now.
devs() { ls -d /dev/ublkb* /dev/ublkc* /sys/class/ublk-char/* 2>/dev/null | sort | tr '\n' ' '; }

# cleanup_devices: ends the daemons and jobs a failed scenario left behind and
# deletes its devices, so that the next one starts clean.
cleanup_devices() {
  for p in $(pidof augur rublk fio); do
    echo "    | left behind: pid $p ($(tr '\0' ' ' </proc/$p/cmdline | cut -c1-80)); killing it"
    kill -9 "$p"
  done
  for c in /sys/class/ublk-char/ublkc*; do
    [ -e "$c" ] || continue
    echo "    | left behind: ${c##*/}; deleting it"
    timeout 30 rublk del -n "${c##*ublkc}" >/dev/null 2>&1
  done
}

# serve_start TAG ARGS...: `augur serve ARGS` in the background, stdout in
# TAG.out and stderr in TAG.err; waits for the device path, its first stdout
# line. Sets PID and DEV; on failure sets REASON.
serve_start() {
  _t=$1
  shift
  DEV=
  augur serve "$@" >"$_t.out" 2>"$_t.err" &
  PID=$!
  _w=0
  while [ "$_w" -lt 600 ]; do
    DEV=$(head -n1 "$_t.out" 2>/dev/null)
    if [ -n "$DEV" ] && [ -b "$DEV" ]; then return 0; fi
    if ! alive "$PID"; then
      wait "$PID"
      REASON="augur serve exited $? before its device was live: $(tail -n1 "$_t.err")"
      show "$_t.err"
      return 1
    fi
    sleep 0.1
    _w=$((_w + 1))
  done
  REASON="augur serve: no live device after 60 s (first stdout line: '$DEV')"
  show "$_t.err"
  return 1
}

# serve_stop TAG: SIGTERM; expects exit 0 within 30 s and the device gone.
serve_stop() {
  kill -TERM "$PID" 2>/dev/null
  if ! wait_gone "$PID" 30; then
    kill -9 "$PID"
    wait "$PID"
    REASON="augur serve still running 30 s after SIGTERM"
    return 1
  fi
  wait "$PID"
  _rc=$?
  if [ "$_rc" != 0 ]; then
    REASON="augur serve exited $_rc on SIGTERM: $(tail -n1 "$1.err")"
    show "$1.err"
    return 1
  fi
  _w=0
  while [ -e "$DEV" ] && [ "$_w" -lt 50 ]; do
    sleep 0.1
    _w=$((_w + 1))
  done
  [ ! -e "$DEV" ] || {
    REASON="$DEV still present after augur serve exited"
    return 1
  }
}

# serve_kill: SIGTERM, then SIGKILL after 10 s (a failed scenario's cleanup).
serve_kill() {
  kill -TERM "$PID" 2>/dev/null
  wait_gone "$PID" 10 || kill -9 "$PID" 2>/dev/null
  wait "$PID" 2>/dev/null
}

# fio_verify NAME LOG FILE [ARGS]: the verified job; fails with REASON.
fio_verify() {
  _name=$1 _log=$2 _file=$3
  shift 3
  # shellcheck disable=SC2086
  if fio --name="$_name" --filename="$_file" $FIO_VERIFY "$@" >"$_log" 2>&1; then
    return 0
  fi
  REASON="fio: $(grep -m1 -iE 'verify|error|bad|fail' "$_log" || tail -n1 "$_log")"
  show "$_log"
  return 1
}

# fio_terse LOG FILE ARGS: a timed 4 KiB job at depth 16; prints
# "read_iops=.. p50_us=.. p99_us=.. p999_us=.. write_iops=.." (read
# completion latency percentiles) from fio's terse output.
fio_terse() {
  _log=$1 _file=$2
  shift 2
  fio --name=m --filename="$_file" --ioengine=io_uring --direct=1 --bs=4k --iodepth=16 \
    --time_based --runtime="$MEASURE_S" --ramp_time=1 --percentile_list=50:99:99.9 \
    --minimal "$@" >"$_log" 2>&1 || {
    show "$_log"
    return 1
  }
  awk -F';' '$1 == 3 { for (i = 18; i <= 20; i++) { split($i, a, "="); p[i] = a[2] }
    printf "read_iops=%d p50_us=%d p99_us=%d p999_us=%d write_iops=%d\n", $8, p[18], p[19], p[20], $49; found = 1 }
    END { exit !found }' "$_log"
}

# The pid of rublk's daemon for device N (from `rublk list`).
rublk_pid() { rublk list -n "$1" 2>/dev/null | sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' | head -n1; }

# --- 0: the ublk driver and the rublk reference daemon --------------------------
# Checks the guest itself: a libublk server serves verified I/O, and survives
# kill -9 through user recovery, the way scenario 3 expects of augur.
scenario_0() {
  if grep -q '^ublk_drv ' /proc/modules && [ -c /dev/ublk-control ]; then
    ok ublk-driver
  else
    fail ublk-driver "ublk_drv not loaded or no /dev/ublk-control"
  fi

  truncate -s 64M /tmp/s0.img
  if rublk add loop -n 0 -f /tmp/s0.img >/tmp/s0-add.log 2>&1 && wait_blk /dev/ublkb0 10; then
    if fio_verify rublk-loop /tmp/s0-fio.log /dev/ublkb0 --rw=randrw --size="$VERIFY_SIZE"; then
      ok rublk-loop-verify
    else
      fail rublk-loop-verify "$REASON"
    fi
    rublk del -n 0 >/dev/null 2>&1
  else
    fail rublk-loop-verify "rublk add loop: $(tail -n1 /tmp/s0-add.log)"
  fi

  # kill -9 the daemon and `rublk recover`: the device serves again. (rublk
  # sets no UBLK_F_USER_RECOVERY_REISSUE, so I/O in flight at the kill fails;
  # the daemon is killed idle here. Scenario 3 kills augur under load.)
  if rublk add loop -n 1 -r -f /tmp/s0.img >/tmp/s0-add.log 2>&1 && wait_blk /dev/ublkb1 10; then
    pid=$(rublk_pid 1)
    if [ -z "$pid" ]; then
      fail rublk-recover "no daemon pid in 'rublk list -n 1'"
    else
      kill -9 "$pid"
      wait_gone "$pid" 10
      if ! rublk recover -n 1 >/tmp/s0-recover.log 2>&1; then
        fail rublk-recover "rublk recover: $(tail -n1 /tmp/s0-recover.log)"
      elif fio_verify rublk-recover /tmp/s0-rec.log /dev/ublkb1 --rw=randrw --size=8M; then
        ok rublk-recover
      else
        fail rublk-recover "after recovery: $REASON"
      fi
    fi
    rublk del -n 1 >/dev/null 2>&1
  else
    fail rublk-recover "rublk add loop -r: $(tail -n1 /tmp/s0-add.log)"
  fi
  rm -f /tmp/s0.img
}

# --- 1: fio verify on three gc-heavy replicas, every policy ----------------------
scenario_1() {
  for p in $POLICIES; do
    rm -f /tmp/s1-r*.img
    if serve_start /tmp/s1-$p --size 64M --policy "$p" \
      --replica emu:gc-heavy:/tmp/s1-r0.img --replica emu:gc-heavy:/tmp/s1-r1.img \
      --replica emu:gc-heavy:/tmp/s1-r2.img; then
      if fio_verify "verify-$p" "/tmp/s1-$p.fio" "$DEV" --rw=randrw --size="$VERIFY_SIZE" &&
        serve_stop "/tmp/s1-$p"; then
        ok "verify-$p"
      else
        fail "verify-$p" "$REASON"
        serve_kill
      fi
    else
      fail "verify-$p" "$REASON"
    fi
  done
  # 512-byte logical blocks, two queues (two fio jobs, each on its own half),
  # requests from 512 B to 64 KiB, some crossing the 128 KiB stripes.
  rm -f /tmp/s1-r*.img
  if serve_start /tmp/s1-bs512 --size 64M --policy linnos+hedge --block-size 512 --queues 2 \
    --depth 32 --replica emu:gc-heavy:/tmp/s1-r0.img --replica /tmp/s1-r1.img \
    --replica emu:fast-nvme:/tmp/s1-r2.img; then
    if [ "$(cat "/sys/block/${DEV#/dev/}/queue/logical_block_size")" != 512 ]; then
      fail verify-bs512-q2 "logical_block_size is $(cat "/sys/block/${DEV#/dev/}/queue/logical_block_size"), not 512"
      serve_kill
    elif fio_verify verify-bs512 /tmp/s1-bs512.fio "$DEV" --rw=randrw --numjobs=2 \
      --size=12M --offset_increment=12M --bssplit=512/30:4k/40:20k/15:64k/15 --blockalign=512 &&
      serve_stop /tmp/s1-bs512; then
      ok verify-bs512-q2
    else
      fail verify-bs512-q2 "$REASON"
      serve_kill
    fi
  else
    fail verify-bs512-q2 "$REASON"
  fi
  rm -f /tmp/s1-r*.img
}

# --- 2: ext4 on the device; replicas identical afterwards -------------------------
scenario_2() {
  rm -f /tmp/s2-r*.img
  if ! serve_start /tmp/s2 --size 128M --policy linnos+hedge \
    --replica emu:gc-heavy:/tmp/s2-r0.img --replica emu:gc-heavy:/tmp/s2-r1.img \
    --replica emu:gc-heavy:/tmp/s2-r2.img; then
    for c in ext4-remount-verify ext4-fsck ext4-replicas-identical; do fail $c "$REASON"; done
    return
  fi
  mnt=/mnt/s2
  mkdir -p $mnt
  if ! mkfs.ext4 -q -F "$DEV" >/tmp/s2-mkfs.log 2>&1 || ! mount -t ext4 "$DEV" $mnt 2>/tmp/s2-mount.log; then
    show /tmp/s2-mkfs.log
    show /tmp/s2-mount.log
    fail ext4-remount-verify "mkfs.ext4 or mount failed: $(tail -n1 /tmp/s2-mkfs.log /tmp/s2-mount.log | tr '\n' ' ')"
  else
    # A tree of files of assorted sizes (1 KiB - 1 MiB) and one of 8 MiB.
    for d in 1 2 3 4; do
      mkdir -p $mnt/d$d/sub
      for f in 1 2 3 4 5 6 7 8; do
        dd if=/dev/urandom of=$mnt/d$d/f$f bs=1k count=$(((d * 131 + f * 977) % 1024 + 1)) 2>/dev/null
        dd if=/dev/urandom of=$mnt/d$d/sub/g$f bs=1k count=$(((d + f) * 3)) 2>/dev/null
      done
    done
    dd if=/dev/urandom of=$mnt/big bs=1M count=8 2>/dev/null
    (cd $mnt && find . -type f | sort | xargs sha256sum) >/tmp/s2.sums
    umount $mnt
    echo 3 >/proc/sys/vm/drop_caches
    if mount -t ext4 "$DEV" $mnt 2>/tmp/s2-mount.log &&
      (cd $mnt && sha256sum -c -s /tmp/s2.sums) && [ "$(wc -l </tmp/s2.sums)" -gt 60 ]; then
      ok ext4-remount-verify
    else
      fail ext4-remount-verify "checksums differ after remount: $(cd $mnt 2>/dev/null && sha256sum -c /tmp/s2.sums 2>&1 | grep -v ': OK' | head -n3 | tr '\n' ' ')"
    fi
    umount $mnt 2>/dev/null
  fi
  if e2fsck -fn "$DEV" >/tmp/s2-fsck.log 2>&1; then
    ok ext4-fsck
  else
    fail ext4-fsck "e2fsck -fn: $(tail -n1 /tmp/s2-fsck.log)"
    show /tmp/s2-fsck.log
  fi
  if ! serve_stop /tmp/s2; then
    fail ext4-replicas-identical "$REASON"
  elif cmp /tmp/s2-r0.img /tmp/s2-r1.img >/tmp/s2-cmp.log 2>&1 &&
    cmp /tmp/s2-r0.img /tmp/s2-r2.img >>/tmp/s2-cmp.log 2>&1; then
    ok ext4-replicas-identical
  else
    fail ext4-replicas-identical "$(head -n1 /tmp/s2-cmp.log)"
  fi
  rm -f /tmp/s2-r*.img
}

# --- 3: kill -9 the daemon under a verify job; --recover; the job completes ----
scenario_3() {
  rm -f /tmp/s3-r*.img
  set -- --id 3 --replica /tmp/s3-r0.img --replica emu:gc-heavy:/tmp/s3-r1.img
  if ! serve_start /tmp/s3a --size 128M "$@"; then
    fail recover-fio-verify "$REASON"
    fail recover-stop "no device"
    return
  fi
  dev1=$DEV
  fio --name=recover --filename="$DEV" $FIO_VERIFY --rw=randwrite --size=64M >/tmp/s3.fio 2>&1 &
  fio_pid=$!
  sleep 1.5
  if ! alive "$fio_pid"; then
    fail recover-fio-verify "fio finished before the kill; make the job longer"
    serve_kill
  else
    kill -9 "$PID"
    wait "$PID" 2>/dev/null
    sleep 0.5
    if ! serve_start /tmp/s3b --recover "$@"; then
      fail recover-fio-verify "$REASON"
      kill -9 "$fio_pid" 2>/dev/null
    elif [ "$DEV" != "$dev1" ]; then
      fail recover-fio-verify "--recover printed $DEV, not $dev1"
    else
      wait "$fio_pid"
      frc=$?
      if [ "$frc" = 0 ]; then
        ok recover-fio-verify
      else
        fail recover-fio-verify "fio exited $frc after recovery: $(grep -m1 -iE 'verify|error' /tmp/s3.fio)"
        show /tmp/s3.fio
      fi
    fi
  fi
  wait "$fio_pid" 2>/dev/null
  if serve_stop /tmp/s3b; then ok recover-stop; else fail recover-stop "$REASON"; fi
  rm -f /tmp/s3-r*.img
}

# --- 4: a replica fails mid-run ------------------------------------------------------
scenario_4() {
  rm -f /tmp/s4-r*.img
  if ! serve_start /tmp/s4 --size 64M --policy linnos \
    --replica emu:gc-heavy:/tmp/s4-r0.img --replica emu:gc-heavy:/tmp/s4-r1.img \
    --replica emu:gc-heavy:/tmp/s4-r2.img --fail-replica 1 --fail-after 2000; then
    fail replica-fail-verify "$REASON"
    fail replica-fail-logged "no device"
    return
  fi
  if fio_verify replica-fail /tmp/s4.fio "$DEV" --rw=randrw --size="$VERIFY_SIZE"; then
    ok replica-fail-verify
  else
    fail replica-fail-verify "$REASON"
  fi
  serve_stop /tmp/s4 || echo "    | $REASON"
  if grep -q 'replica 1 (.*) FAILED:' /tmp/s4.err; then
    ok replica-fail-logged
  else
    fail replica-fail-logged "no 'replica 1 (PATH) FAILED:' line on augur's stderr"
    show /tmp/s4.err
  fi
  rm -f /tmp/s4-r*.img
}

# --- 5: after write + fsync the data is in every replica file -------------------
scenario_5() {
  rm -f /tmp/s5-r*.img
  if ! serve_start /tmp/s5 --size 32M --policy hedge --replica /tmp/s5-r0.img \
    --replica emu:gc-heavy:/tmp/s5-r1.img --replica emu:fast-nvme:/tmp/s5-r2.img; then
    fail flush-every-replica "$REASON"
    return
  fi
  dd if=/dev/urandom of=/tmp/s5.pat bs=4k count=300 2>/dev/null
  # Buffered writes through the page cache; conv=fsync makes them a flush.
  bad=
  if dd if=/tmp/s5.pat of="$DEV" bs=4k seek=1234 conv=notrunc,fsync 2>/tmp/s5-dd.log; then
    for r in 0 1 2; do
      dd if=/tmp/s5-r$r.img of=/tmp/s5.got bs=4k skip=1234 count=300 2>/dev/null
      cmp -s /tmp/s5.pat /tmp/s5.got || bad="$bad r$r"
    done
    if [ -z "$bad" ]; then ok flush-every-replica; else fail flush-every-replica "data missing after fsync in replica(s)$bad"; fi
  else
    fail flush-every-replica "dd to $DEV: $(tail -n1 /tmp/s5-dd.log)"
  fi
  id=${DEV#/dev/ublkb}
  # The control socket: status answers, and models swapped every 100 ms
  # while fio verifies lose nothing.
  sock=/run/augur/ublk$id.sock
  if [ ! -S "$sock" ]; then
    fail ctl-swap-verify "no control socket at $sock"
  elif ! augur ctl --id "$id" status >/tmp/s5-ctl.log 2>&1 || ! grep -q "policy hedge" /tmp/s5-ctl.log; then
    fail ctl-swap-verify "augur ctl --id $id status: $(head -n3 /tmp/s5-ctl.log | tr '\n' ' ')"
  else
    augur ctl --id "$id" policy set linnos >/dev/null 2>&1
    fio --name=swap --filename="$DEV" $FIO_VERIFY --rw=randrw --size="$VERIFY_SIZE" >/tmp/s5-fio.log 2>&1 &
    fpid=$!
    swaps=0 swap_err=
    while alive "$fpid"; do
      if augur ctl --id "$id" model load default >/tmp/s5-swap.log 2>&1; then
        swaps=$((swaps + 1))
      else
        swap_err=$(tail -n1 /tmp/s5-swap.log)
      fi
      sleep 0.1
    done
    if ! wait "$fpid"; then
      fail ctl-swap-verify "fio under model swaps: $(grep -m1 -iE 'verify|error|bad|fail' /tmp/s5-fio.log || tail -n1 /tmp/s5-fio.log)"
    elif [ -n "$swap_err" ]; then
      fail ctl-swap-verify "augur ctl model load: $swap_err"
    elif [ "$swaps" -lt 3 ]; then
      fail ctl-swap-verify "only $swaps model swaps during the fio run"
    else
      echo "    $swaps model swaps during fio verify on $DEV"
      ok ctl-swap-verify
    fi
    augur ctl --id "$id" policy set hedge >/dev/null 2>&1
  fi
  # `augur list` names the device and its policy; `augur stop --id N` ends
  # its daemon (exit 0), which removes its control socket.
  augur list >/tmp/s5-list.log 2>&1
  if ! grep -q "$DEV" /tmp/s5-list.log; then
    fail cli-list-stop "augur list does not name $DEV: $(head -n3 /tmp/s5-list.log | tr '\n' ' ')"
    serve_kill
  elif ! timeout 60 augur stop --id "$id" >/tmp/s5-stop.log 2>&1; then
    fail cli-list-stop "augur stop --id $id: $(tail -n1 /tmp/s5-stop.log)"
    serve_kill
  elif ! wait_gone "$PID" 10; then
    fail cli-list-stop "the daemon still runs after augur stop"
    serve_kill
  elif ! wait "$PID"; then
    fail cli-list-stop "the daemon exited $? after augur stop: $(tail -n1 /tmp/s5.err)"
  elif [ -e "$DEV" ]; then
    fail cli-list-stop "$DEV still present after augur stop"
  elif ! grep -q "$DEV.*hedge" /tmp/s5-list.log; then
    fail cli-list-stop "augur list does not show the live policy: $(grep "$DEV" /tmp/s5-list.log)"
  elif [ -e "$sock" ]; then
    fail cli-list-stop "$sock left after the daemon stopped"
  else
    ok cli-list-stop
  fi
  rm -f /tmp/s5-r*.img /tmp/s5.pat /tmp/s5.got
}

# --- 6: bad input exits 2 with one line and leaves no device --------------------
# bad_serve CHECK WANT ARGS: augur serve ARGS must exit 2 with one stderr line containing WANT.
bad_serve() {
  _c=$1 _want=$2
  shift 2
  timeout 30 augur serve "$@" >/tmp/s6.out 2>/tmp/s6.err
  _rc=$?
  _lines=$(grep -c . /tmp/s6.err)
  if [ "$_rc" = 2 ] && [ "$_lines" = 1 ] && grep -q -- "$_want" /tmp/s6.err; then
    ok "$_c"
  else
    fail "$_c" "exit $_rc (want 2), $_lines stderr line(s) (want 1 naming '$_want'): $(head -n1 /tmp/s6.err)"
    show /tmp/s6.err
  fi
}
scenario_6() {
  before=$(devs)
  rm -f /tmp/s6-*.img
  truncate -s 32M /tmp/s6-a.img
  truncate -s 16M /tmp/s6-b.img
  bad_serve bad-missing-replica /tmp/s6-missing.img --replica /tmp/s6-a.img --replica /tmp/s6-missing.img
  bad_serve bad-size-mismatch /tmp/s6-b.img --replica /tmp/s6-a.img --replica /tmp/s6-b.img
  bad_serve bad-policy nosuchpolicy --replica /tmp/s6-a.img --policy nosuchpolicy
  # Without the driver: one line saying so, exit 2 (then the driver comes back).
  if rmmod ublk_drv; then
    bad_serve no-ublk ublk --size 8M --replica /tmp/s6-a.img
    modprobe ublk_drv
    wait_blk /dev/ublk-control 5 2>/dev/null || [ -c /dev/ublk-control ] || echo "    | /dev/ublk-control did not come back"
  else
    fail no-ublk "rmmod ublk_drv failed"
  fi
  after=$(devs)
  if [ "$before" = "$after" ] && [ ! -e /tmp/s6-missing.img ]; then
    ok bad-no-device-left
  else
    fail bad-no-device-left "before: '$before' after: '$after'"
  fi
  rm -f /tmp/s6-*.img
}

# --- 7: MEASURE overhead: augur (one replica, baseline) vs rublk loop vs raw -----
# The backing store is a brd ramdisk: a block device with real O_DIRECT and
# NOWAIT reads (tmpfs files differ there between open modes), shared by all.
# `rublk add null` is the ublk round trip alone, the ceiling for both daemons.
scenario_7() {
  good=1
  bdev=/dev/ram0
  if ! modprobe brd rd_nr=1 rd_size=262144 || ! wait_blk $bdev 10; then
    fail measure-overhead "modprobe brd: no $bdev"
    return
  fi
  dd if=/dev/zero of=$bdev bs=1M count=256 oflag=direct 2>/dev/null
  # rublk pins its queue thread to one CPU by default; augur's are unpinned.
  rublk add null -n 1 --multi-cpus-affinity >/tmp/s7-rublk.log 2>&1 && wait_blk /dev/ublkb1 10 || {
    good=0
    echo "    | rublk add null: $(tail -n1 /tmp/s7-rublk.log)"
  }
  rublk add loop -n 2 --multi-cpus-affinity -f $bdev >/tmp/s7-rublk.log 2>&1 && wait_blk /dev/ublkb2 10 || {
    good=0
    echo "    | rublk add loop: $(tail -n1 /tmp/s7-rublk.log)"
  }
  adev=
  if serve_start /tmp/s7 --id 3 --policy baseline --replica $bdev; then adev=$DEV; else
    good=0
    echo "    | $REASON"
  fi
  r=1
  order="raw rublk augur null"
  while [ "$r" -le "$ROUNDS" ]; do
    for t in $order; do
      case $t in
        raw) file=$bdev ;;
        rublk) file=/dev/ublkb2 ;;
        augur) file=$adev ;;
        null) file=/dev/ublkb1 ;;
      esac
      [ -b "$file" ] || continue
      if m=$(fio_terse /tmp/s7-$t.fio "$file" --rw=randread); then
        echo "MEASURE overhead target=$t round=$r $m"
      else
        good=0
      fi
    done
    order="${order#* } ${order%% *}" # each round starts with the next target
    r=$((r + 1))
  done
  [ -z "$adev" ] || serve_stop /tmp/s7 || {
    good=0
    echo "    | $REASON"
  }
  rublk del -n 1 >/dev/null 2>&1
  rublk del -n 2 >/dev/null 2>&1
  rmmod brd
  if [ "$good" = 1 ]; then ok measure-overhead; else fail measure-overhead "a measurement run failed (see the console)"; fi
}

# --- 8: MEASURE read tails on gc-heavy replicas under a 70/30 mix -------------
# Writes trigger gc-heavy's garbage collection; reads are what the policy routes.
scenario_8() {
  good=1
  r=1
  order="primary least-pending augur linnos"
  while [ "$r" -le "$ROUNDS" ]; do
    for p in $order; do
      rm -f /tmp/s8-r*.img
      if serve_start /tmp/s8-$p --size 128M --policy $p --replica emu:gc-heavy:/tmp/s8-r0.img \
        --replica emu:gc-heavy:/tmp/s8-r1.img --replica emu:gc-heavy:/tmp/s8-r2.img; then
        if m=$(fio_terse /tmp/s8-$p.fio "$DEV" --rw=randrw --rwmixread=70); then
          echo "MEASURE gc policy=$p round=$r $m"
        else
          good=0
        fi
        serve_stop /tmp/s8-$p || {
          good=0
          echo "    | $REASON"
        }
      else
        good=0
        echo "    | $REASON"
      fi
    done
    order="${order#* } ${order%% *}"
    r=$((r + 1))
  done
  rm -f /tmp/s8-r*.img
  if [ "$good" = 1 ]; then ok measure-gc-tails; else fail measure-gc-tails "a measurement run failed (see the console)"; fi
}

# kmod_same NAME MODEL N: the module's outputs for N generated vectors equal
# the Rust integer path's, line for line.
kmod_same() {
  if augur kmod load "$2" >/tmp/k9.log 2>&1 &&
    augur kmod predict --random "$3" --seed 5 >/tmp/k9-kernel.txt 2>>/tmp/k9.log &&
    augur model predict --model "$2" --random "$3" --seed 5 >/tmp/k9-rust.txt 2>>/tmp/k9.log &&
    [ "$(wc -l </tmp/k9-rust.txt)" -eq "$3" ] && cmp -s /tmp/k9-kernel.txt /tmp/k9-rust.txt; then
    ok "kmod-same-as-rust-$1"
    augur model predict --model "$2" --random "$3" --seed 5 --time 1 2>/tmp/k9-rust-time.log
    echo "MEASURE kmod model=$1 $(sed -n 's/.*: \([0-9]*\) ns per prediction/kernel_ns_per_prediction=\1/p' /tmp/k9.log)" \
      "$(sed -n 's/^\([0-9.]*\) ns per prediction.*/rust_userspace_ns_per_prediction=\1/p' /tmp/k9-rust-time.log)"
  else
    fail "kmod-same-as-rust-$1" "the kernel's outputs differ from the Rust integer path's"
    show /tmp/k9.log
    cmp /tmp/k9-kernel.txt /tmp/k9-rust.txt 2>&1 | sed 's/^/    | /'
  fi
}

# The kernel module: built against this kernel's headers (tests/vm/run),
# loaded, checked bit for bit against the Rust integer path, models swapped
# under RCU while predictions run, bad models refused with the active one
# kept, removed and reloaded; the kernel log stays free of warnings and
# memory-check reports (the guest boots with kfence and slub_debug).
scenario_9() {
  dmesg -c >/dev/null
  if insmod /vm/augur.ko && [ -c /dev/augur ] && augur kmod info | grep -q "no model loaded"; then
    ok kmod-insmod
  else
    fail kmod-insmod "insmod or /dev/augur failed"
    dmesg | tail -n 5 | sed 's/^/    | /'
    return
  fi
  kmod_same base /vm/base.augm 4000
  kmod_same deep2 /vm/deep2.augm 2000
  kmod_same heimdall /vm/heimdall.augm 4000
  # Bad files: refused with a precise errno, the active model untouched.
  augur kmod load /vm/base.augm 2>/dev/null
  before=$(augur kmod info)
  head -c 500 /vm/base.augm >/tmp/k9-trunc.augm
  bad=0
  # Written raw (the CLI would refuse them itself before the module sees them).
  if cat /tmp/k9-trunc.augm >/dev/augur 2>/dev/null; then bad=1; fi
  if printf 'AUGURMDL\002\000' >/dev/augur 2>/dev/null; then bad=1; fi
  after=$(augur kmod info)
  refused=$(dmesg | grep -c "model refused")
  if [ "$bad" = 0 ] && [ "$before" = "$after" ] && [ "$refused" -ge 2 ]; then
    ok kmod-bad-model-kept
  else
    fail kmod-bad-model-kept "a bad model was taken or the active one changed (bad=$bad refused=$refused)"
    echo "    | before: $before"
    echo "    | after:  $after"
    dmesg | tail -n 5 | sed 's/^/    | /'
  fi
  # Swaps while predictions run: each self-test call holds one model, so its
  # outputs are all of base or all of base2.
  augur model predict --model /vm/base.augm --random 1024 --seed 9 >/tmp/k9-a.txt
  augur model predict --model /vm/base2.augm --random 1024 --seed 9 >/tmp/k9-b.txt
  (
    i=0
    while [ $i -lt 150 ]; do
      augur kmod load /vm/base.augm 2>/dev/null
      augur kmod load /vm/base2.augm 2>/dev/null
      i=$((i + 1))
    done
  ) &
  swapper=$!
  calls=0 mixed=0 seen_a=0 seen_b=0
  while alive $swapper; do
    augur kmod predict --random 1024 --seed 9 >/tmp/k9-got.txt 2>/dev/null || mixed=$((mixed + 1))
    if cmp -s /tmp/k9-got.txt /tmp/k9-a.txt; then
      seen_a=$((seen_a + 1))
    elif cmp -s /tmp/k9-got.txt /tmp/k9-b.txt; then
      seen_b=$((seen_b + 1))
    else
      mixed=$((mixed + 1))
    fi
    calls=$((calls + 1))
  done
  wait $swapper
  swaps=$(augur kmod info | sed -n 's/.*; \([0-9]*\) swaps.*/\1/p')
  echo "MEASURE kmod-swaps calls=$calls model_a=$seen_a model_b=$seen_b mixed=$mixed swaps=$swaps"
  if [ "$calls" -gt 0 ] && [ "$mixed" = 0 ] && [ "${swaps:-0}" -ge 300 ]; then
    ok kmod-swap-under-load
  else
    fail kmod-swap-under-load "calls=$calls mixed=$mixed swaps=$swaps"
  fi
  # rmmod with a model loaded, then insmod/rmmod a few times.
  good=1
  rmmod augur || good=0
  for i in 1 2 3; do
    insmod /vm/augur.ko || good=0
    augur kmod load /vm/deep2.augm 2>/dev/null || good=0
    rmmod augur || good=0
  done
  if [ "$good" = 1 ] && [ ! -e /dev/augur ]; then ok kmod-rmmod; else fail kmod-rmmod "insmod/rmmod failed"; fi
  if dmesg | grep -E "WARNING|BUG|Oops|kfence|KFENCE|slub|general protection|refcount" >/tmp/k9-dmesg.txt; then
    fail kmod-dmesg-clean "the kernel log has reports"
    show /tmp/k9-dmesg.txt 20
  else
    ok kmod-dmesg-clean
  fi
}

# s10_reads LEG_FIELDS...: from `dmsetup status s10`, the reads of each leg.
s10_reads() { dmsetup status s10 | awk '{ for (i = 6; i <= NF; i += 5) printf "%s ", $(i + 1) }'; }

# The device-mapper target over three legs (brd ramdisks), one slowed by
# dm-delay: fio verify passes; with linnos the reads move off the slow leg
# and with baseline they do not (read p99 of each, one guest run); a leg
# switched to dm-error mid-verify leaves verify passing and the leg down.
scenario_10() {
  export DM_DISABLE_UDEV=1
  dmesg -c >/dev/null
  S=131072 # 64 MiB in sectors
  lsmod | grep -q '^augur ' || insmod /vm/augur.ko
  if ! modprobe brd rd_nr=3 rd_size=65536 || ! wait_blk /dev/ram2 10 ||
    ! modprobe dm_mod || ! modprobe dm_delay || ! insmod /vm/dm-augur.ko ||
    ! augur kmod load default >/tmp/s10.log 2>&1; then
    fail dm-create "modules or the model did not load"
    show /tmp/s10.log
    return
  fi
  # Leg 1 reads take 3 ms more (writes are not delayed); leg 2 sits on a
  # linear map that is switched to dm-error later.
  if dmsetup create s10slow --table "0 $S delay /dev/ram1 0 3 /dev/ram1 0 0" &&
    dmsetup create s10l2 --table "0 $S linear /dev/ram2 0" &&
    dmsetup create s10 --table "0 $S augur baseline /dev/ram0 /dev/mapper/s10slow /dev/mapper/s10l2" &&
    wait_blk /dev/mapper/s10 10; then
    ok dm-create
  else
    fail dm-create "dmsetup create failed"
    dmesg | tail -n 5 | sed 's/^/    | /'
    return
  fi
  # Verify under linnos while the model is swapped every few hundred ms:
  # each read holds one whole model (RCU), and no data may suffer.
  dmsetup message s10 0 policy linnos
  (
    while [ ! -e /tmp/s10-stop ]; do
      augur kmod load /vm/base.augm 2>/dev/null
      augur kmod load default 2>/dev/null
    done
  ) &
  swapper=$!
  if fio_verify s10 /tmp/s10-verify.log /dev/mapper/s10 --size=32M --rw=randrw --loops=2; then vok=1; else vok=0; fi
  touch /tmp/s10-stop
  wait $swapper
  rm -f /tmp/s10-stop
  augur kmod load default 2>/dev/null
  swaps=$(augur kmod info | sed -n 's/.*; \([0-9]*\) swaps.*/\1/p')
  echo "MEASURE dm-swaps swaps_during_verify=$swaps"
  if [ "$vok" = 1 ] && [ "${swaps:-0}" -ge 4 ]; then
    ok dm-verify
  else
    fail dm-verify "fio verify under model swaps: verify=$vok swaps=$swaps"
  fi
  good=1
  for p in baseline linnos; do
    dmsetup message s10 0 policy $p && dmsetup message s10 0 reset || good=0
    if m=$(fio_terse /tmp/s10-$p.fio /dev/mapper/s10 --rw=randread --iodepth=4 --size=64M); then
      reads=$(s10_reads)
      echo "MEASURE dm policy=$p $m leg_reads=$(echo $reads | tr ' ' ,)"
      eval "p99_$p=$(echo "$m" | sed -n 's/.*p99_us=\([0-9]*\).*/\1/p')"
      set -- $reads
      eval "slow_$p=$2 total_$p=$(($1 + $2 + $3))"
    else
      good=0
    fi
  done
  dmsetup status s10 | sed 's/^/    | status: /'
  if [ "$good" = 1 ] && [ "${total_linnos:-0}" -gt 0 ] && [ "${total_baseline:-0}" -gt 0 ] &&
    [ $((slow_linnos * 100 / total_linnos)) -lt $((slow_baseline * 100 / total_baseline / 2)) ] &&
    [ "$p99_linnos" -lt "$p99_baseline" ]; then
    ok dm-linnos-shifts-reads
  else
    fail dm-linnos-shifts-reads "slow-leg reads baseline ${slow_baseline:-?}/${total_baseline:-?}, linnos ${slow_linnos:-?}/${total_linnos:-?}; p99 ${p99_baseline:-?} vs ${p99_linnos:-?} us"
  fi
  # Leg 2 fails mid-verify: writes carry on on the others, its reads are
  # retried there, and it is reported down.
  (sleep 2 && dmsetup suspend s10l2 && dmsetup load s10l2 --table "0 $S error" && dmsetup resume s10l2) &
  failer=$!
  # Four passes (about 10 s in the guest), so the switch lands inside.
  if fio_verify s10f /tmp/s10-fail.log /dev/mapper/s10 --size=32M --rw=randrw --loops=4; then vok=1; else vok=0; fi
  wait $failer
  state=$(dmsetup status s10 | awk '{ print $16 }')
  if [ "$vok" = 1 ] && [ "$state" = D ] && dmesg | grep -q "dm-augur: .*leg 2 .*failed"; then
    ok dm-leg-fails
  else
    fail dm-leg-fails "verify=$vok leg 2 state=$state"
    show /tmp/s10-fail.log
    dmesg | grep augur | tail -n 5 | sed 's/^/    | /'
  fi
  dmsetup remove s10 && dmsetup remove s10slow && dmsetup remove s10l2 &&
    rmmod dm_augur && rmmod augur && rmmod brd && ok dm-remove || fail dm-remove "teardown failed"
  # The failed leg's I/O errors are expected; nothing else may be there.
  if dmesg | grep -E "WARNING|BUG|Oops|kfence|KFENCE|slub|general protection|refcount" >/tmp/s10-dmesg.txt; then
    fail dm-dmesg-clean "the kernel log has reports"
    show /tmp/s10-dmesg.txt 20
  else
    ok dm-dmesg-clean
  fi
}

# --- 11: kill -9 at N random moments under writes; restart; resync -------------
# Each cycle, on the device: `augur stamp write` on the second half and fio
# randwrite (4-64 KiB) on the first; SIGKILL the daemon at a seeded random
# moment; `augur stop` deletes the dead device (the writers then see I/O
# errors and end); `augur serve` starts again on the same replica files,
# without --recover (a new device); once `augur ctl status` says no sync is
# running, `augur stamp check` must find every acknowledged stamp. The next
# cycle kills that daemon. At the end it stops and the replicas must be
# byte-identical. The seed is printed; augur_seed=N on the kernel command
# line (tests/vm/run: AUGUR_VM_SEED=N) replays it; augur_cycles=N
# (AUGUR_VM_CYCLES) sets the number of kills, 10 by default.
S11_CYCLES=$(sed -n 's/.*augur_cycles=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$S11_CYCLES" ] || S11_CYCLES=10
S11_ID=11
# s11_rand N: sets R to a number in [0, N) from the seeded LCG in S11_RNG.
s11_rand() {
  S11_RNG=$(((S11_RNG * 1103515245 + 12345) % 2147483648))
  R=$(((S11_RNG >> 8) % $1))
}
# s11_wait_sync: waits (120 s at most) until `augur ctl status --json` shows
# no sync running; no "sync" object counts as none. SYNC: what it last said.
s11_wait_sync() {
  SYNC="not reported"
  _w=0
  while [ "$_w" -lt 1200 ]; do
    # Exit 1 means degraded: the reply is still there.
    augur ctl --id "$S11_ID" --json status >/tmp/s11-ctl.json 2>/tmp/s11-ctl.err
    if ! grep -q '"ok": true' /tmp/s11-ctl.json; then
      REASON="augur ctl status: $(head -c 200 /tmp/s11-ctl.json /tmp/s11-ctl.err | tr '\n' ' ')"
      return 1
    fi
    _s=$(awk '/"sync": \{/ { on = 1 } on { printf "%s", $0 } on && /\}/ { exit }' /tmp/s11-ctl.json | tr -d ' ')
    [ -n "$_s" ] || return 0
    SYNC=${_s#\"sync\":}
    SYNC=${SYNC%,}
    case $_s in *'"running":true'*) ;; *) return 0 ;; esac
    sleep 0.1
    _w=$((_w + 1))
  done
  REASON="sync still running after 120 s: $SYNC"
  return 1
}
scenario_11() {
  seed=$(sed -n 's/.*augur_seed=\([0-9]*\).*/\1/p' /proc/cmdline)
  [ -n "$seed" ] || seed=$(($(date +%s) % 100000))
  echo "    | scenario 11: seed $seed (replay: AUGUR_VM_SEED=$seed tests/vm/run 11)"
  S11_RNG=$seed
  rm -f /tmp/s11-r*.img /tmp/s11.log
  set -- --id "$S11_ID" --replica /tmp/s11-r0.img --replica /tmp/s11-r1.img --sync-rate 0
  if ! serve_start /tmp/s11-0 --size 64M "$@"; then
    fail crash-nothing-lost "$REASON"
    fail crash-replicas-identical "no device"
    return
  fi
  stamp="--log /tmp/s11.log --offset 32M --len 32M"
  bad=
  c=1
  while [ "$c" -le "$S11_CYCLES" ]; do
    fio --name=s11 --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite \
      --bsrange=4k-64k --iodepth=16 --size=32M --time_based --runtime=120 --randrepeat=0 \
      >/tmp/s11.fio 2>&1 &
    fpid=$!
    s11_rand 1000000
    # shellcheck disable=SC2086
    augur stamp write --dev "$DEV" $stamp --seed "$R" --duration 120s >/tmp/s11-w.out 2>&1 &
    wpid=$!
    # Kill only once both writers are under way (starting a process takes a
    # while under TCG): at least 200 writes done and the stamp writer's device open.
    _w=0
    while [ "$_w" -lt 300 ]; do
      n=$(augur ctl --id "$S11_ID" --json stats 2>/dev/null | sed -n 's/^ *"writes": \([0-9]*\).*/\1/p' | head -n1)
      [ "${n:-0}" -ge 200 ] && ls -l "/proc/$wpid/fd" 2>/dev/null | grep -q "$DEV" && break
      sleep 0.1
      _w=$((_w + 1))
    done
    s11_rand 1300
    ms=$((200 + R))
    sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
    kill -9 "$PID"
    wait "$PID" 2>/dev/null
    if ! timeout 60 augur stop --id "$S11_ID" >/tmp/s11-stop.log 2>&1; then
      bad="cycle $c: augur stop --id $S11_ID: $(tail -n1 /tmp/s11-stop.log)"
      break
    fi
    if ! wait_gone "$fpid" 30 || ! wait_gone "$wpid" 30; then
      bad="cycle $c: fio or augur stamp write still running 30 s after the device was deleted"
      break
    fi
    wait "$fpid"
    wait "$wpid"
    wrc=$?
    if [ "$wrc" != 0 ]; then
      bad="cycle $c: augur stamp write exited $wrc: $(tail -n1 /tmp/s11-w.out)"
      break
    fi
    if ! serve_start "/tmp/s11-$c" "$@"; then
      bad="cycle $c: restart: $REASON"
      break
    fi
    if ! s11_wait_sync; then
      bad="cycle $c: $REASON"
      break
    fi
    # shellcheck disable=SC2086
    if ! augur stamp check --dev "$DEV" $stamp >/tmp/s11-c.out 2>&1; then
      bad="cycle $c: $(grep -m1 '^stamp check:' /tmp/s11-c.out || tail -n1 /tmp/s11-c.out)"
      show /tmp/s11-c.out
      break
    fi
    # The replicas agree after the resync: a scrub of the live device.
    if ! augur ctl --id "$S11_ID" scrub --json >/tmp/s11-scrub.out 2>&1; then
      bad="cycle $c: scrub after the resync: $(tr -d '\n ' </tmp/s11-scrub.out | cut -c1-200)"
      break
    fi
    echo "    | cycle $c: killed after $ms ms, $(cut -d' ' -f3 /tmp/s11-w.out) stamps acked, sync $SYNC; $(tail -n1 /tmp/s11-c.out | sed 's/^stamp check: //')"
    c=$((c + 1))
  done
  if [ -z "$bad" ]; then
    echo "    | $S11_CYCLES crash points: nothing lost"
    ok crash-nothing-lost
  else
    fail crash-nothing-lost "$bad (seed $seed)"
    show /tmp/s11-w.out 3
  fi
  if [ -n "$bad" ] && alive "$PID"; then
    serve_kill
  elif [ -n "$bad" ]; then
    timeout 60 augur stop --id "$S11_ID" >/dev/null 2>&1
  fi
  if [ -n "$bad" ]; then
    fail crash-replicas-identical "not compared: $bad"
  elif ! serve_stop "/tmp/s11-$S11_CYCLES"; then
    fail crash-replicas-identical "$REASON"
    serve_kill
  elif cmp /tmp/s11-r0.img /tmp/s11-r1.img >/tmp/s11-cmp.log 2>&1; then
    ok crash-replicas-identical
  else
    blocks=$(cmp -l /tmp/s11-r0.img /tmp/s11-r1.img | head -n 4000000 | awk '{ print int(($1 - 1) / 4096) }' | uniq | wc -l)
    fail crash-replicas-identical "$(head -n1 /tmp/s11-cmp.log); $blocks 4 KiB blocks differ (seed $seed)"
  fi
  rm -f /tmp/s11-r*.img /tmp/s11.log
}

# --- 12: the soak on ublk -------------------------------------------------------------
# tests/soak/soak.sh against `augur serve` (block size 512, depth 128): fio
# verify jobs and augur stamp while host load, policy switches, model swaps,
# a failed and replaced replica and SIGKILL + --recover arrive at seeded
# moments. augur_soak=MINUTES,SEED,ROUND_S on the kernel command line.
scenario_12() {
  _a=$(sed -n 's/.*augur_soak=\([0-9,]*\).*/\1/p' /proc/cmdline)
  SOAK_MINUTES=${_a%%,*}
  _a=${_a#*,}
  SOAK_SEED=${_a%%,*}
  SOAK_ROUND_S=${_a#*,}
  [ -n "$SOAK_MINUTES" ] || SOAK_MINUTES=2
  [ -n "$SOAK_SEED" ] || SOAK_SEED=1
  [ -n "$SOAK_ROUND_S" ] || SOAK_ROUND_S=30
  echo "    | scenario 12: soak seed $SOAK_SEED (replay: tests/soak/run --frontend ublk --minutes $SOAK_MINUTES --seed $SOAK_SEED)"
  # The stall threshold is 20 s here, not 5: the TCG guest runs many times
  # slower than the host, and a 30-minute soak at 5 s saw tmpfs I/O in
  # the guest's kernel take up to 5.5 s under stress-ng at depth 128 (slow,
  # not stuck: every request completed and verified).
  SOAK_STALL_AFTER=20
  SOAK_FRONTEND=ublk SOAK_DIR=/tmp/soak SOAK_SIZE_MB=96 SOAK_MODEL2=/vm/base2.augm SOAK_ID=12 SOAK_LOAD_VM_MB=64 AUGUR=augur
  # In a subshell: the soak's variables stay out of /init's loop.
  (
    . /vm/soak.sh
    soak_main
  )
  rm -rf /tmp/soak
}

# --- 13: the ublk front-end's races ---------------------------------------------------
# Four `augur serve --id 13` at once: exactly one device comes up, the others
# exit 2 saying the id is taken, and none of them deletes the winner's device
# (libublk deletes the device of a failed ADD by its id). Then --recover of a
# killed daemon's device with another array's replicas (same size) is
# refused, by array identity and, without metadata, by file; with the right
# replicas it recovers and serves.
scenario_13() {
  rm -f /tmp/s13-*.img /tmp/s13-*.img.augur-meta
  pids=
  for i in 1 2 3 4; do
    augur serve --id 13 --size 32M --replica /tmp/s13-$i-a.img --replica /tmp/s13-$i-b.img \
      >/tmp/s13-$i.out 2>/tmp/s13-$i.err &
    pids="$pids $!"
  done
  _w=0
  while [ $_w -lt 300 ]; do
    _n=0
    for p in $pids; do alive "$p" && _n=$((_n + 1)); done
    [ $_n -le 1 ] && [ -b /dev/ublkb13 ] && break
    sleep 0.1
    _w=$((_w + 1))
  done
  sleep 1
  winner=
  losers=0
  i=1
  for p in $pids; do
    if alive "$p"; then
      winner=$p
      PID=$p
      DEV=$(head -n1 /tmp/s13-$i.out)
    else
      wait "$p"
      rc=$?
      if [ $rc = 2 ] && grep -q "already exists" /tmp/s13-$i.err; then
        losers=$((losers + 1))
      else
        echo "    | serve $i exited $rc: $(tail -n1 /tmp/s13-$i.err)"
      fi
    fi
    i=$((i + 1))
  done
  if [ -n "$winner" ] && [ $losers = 3 ] && [ -b /dev/ublkb13 ] && [ "$DEV" = /dev/ublkb13 ]; then
    ok id-race-one-device
  else
    fail id-race-one-device "winner '$winner', $losers of 3 refused with 'already exists', /dev/ublkb13 $([ -b /dev/ublkb13 ] && echo present || echo missing)"
  fi
  if [ -n "$winner" ] && fio_verify s13 /tmp/s13.fio /dev/ublkb13 --rw=randwrite --size=16M; then
    ok id-race-survivor-serves
  else
    fail id-race-survivor-serves "${REASON:-no device left}"
  fi
  [ -n "$winner" ] && serve_kill
  cleanup_devices

  rm -f /tmp/s13-*.img /tmp/s13-*.img.augur-meta
  truncate -s 32M /tmp/s13-o0.img /tmp/s13-o1.img
  # Another array of the same size, with its own identity.
  if ! serve_start /tmp/s13o --id 13 --replica /tmp/s13-o0.img --replica /tmp/s13-o1.img; then
    echo "    | $REASON"
  else
    serve_stop /tmp/s13o || echo "    | $REASON"
  fi
  set -- --id 13 --replica /tmp/s13-r0.img --replica /tmp/s13-r1.img
  if ! serve_start /tmp/s13a --size 32M "$@"; then
    fail recover-refuses-other-array "$REASON"
    fail recover-refuses-other-files "no device"
    fail recover-right-replicas "no device"
    return
  fi
  fio_verify s13b /tmp/s13b.fio "$DEV" --rw=randwrite --size=8M >/dev/null || echo "    | $REASON"
  kill -9 "$PID"
  wait "$PID" 2>/dev/null
  sleep 0.5
  timeout 60 augur serve --recover --id 13 --replica /tmp/s13-o0.img --replica /tmp/s13-o1.img >/tmp/s13c.out 2>/tmp/s13c.err
  rc=$?
  if [ $rc = 2 ] && grep -q "belong to array" /tmp/s13c.err; then
    ok recover-refuses-other-array
  else
    fail recover-refuses-other-array "exit $rc (want 2 naming the array): $(tail -n1 /tmp/s13c.err)"
  fi
  timeout 60 augur serve --recover --id 13 --no-bitmap --replica /tmp/s13-o0.img --replica /tmp/s13-o1.img >/tmp/s13d.out 2>/tmp/s13d.err
  rc=$?
  if [ $rc = 2 ] && grep -q "not the ones ublk device 13 was created with" /tmp/s13d.err; then
    ok recover-refuses-other-files
  else
    fail recover-refuses-other-files "exit $rc (want 2 naming the files): $(tail -n1 /tmp/s13d.err)"
  fi
  if serve_start /tmp/s13e --recover "$@" && fio_verify s13e /tmp/s13e.fio "$DEV" --rw=randwrite --size=8M \
    && serve_stop /tmp/s13e; then
    ok recover-right-replicas
  else
    fail recover-right-replicas "$REASON"
    serve_kill
  fi
  rm -f /tmp/s13-*.img /tmp/s13-*.img.augur-meta /tmp/s13*.log
}
