#!/usr/bin/env bash
# The GPU checks in one go (see README "On a GPU"). Builds nothing: it uses dist/ and the tests
# compiled into .device/build/ by `npm run build:device`. Logs go to $OUT.
# Usage: scripts/device-check.sh <step>...
#   steps: driver smoke smoke2 conformance failures verify v3w1 long graph sanitizer bench bench2 probe launch flagprobe profile
#          deepep-build paths2 paths4 large2 large4 walk2 v3w2 long4 bench-w2 sanitizer2 flagged2 flaggedlimit diag ab planprobe sendprobe stateprobe synccheck2 ep (EP_W ranks, default 8) nccl
#          hosts hosts-long hosts-fail hosts-bench hosts-sanitizer (between hosts, simulated on this machine: MOE_A2A_SIMULATED_HOSTS;
#          hosts-bench wants 4 GPUs: 2 hosts x 2 GPUs, NVLink inside a host, sockets between; HOSTS_BENCH_W=2: 2 x 1)
# FAILFAST=1 stops at the first step that fails. The steps ending in 2/4 want that many GPUs (ranks are
# one process per GPU); deepep-build needs .peers/ (a copy of ../shared/peers) and runs in the background.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
TESTS=${TESTS:-.device/build/test}  # TESTS: another build's compiled tests
cli=${CLI:-"node dist/cli/main.js"}  # CLI: another build (an A/B against main)
run() {
  local name=$1; shift; echo "== $name: $*"; local t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  # racecheck exits 0 on warnings (e.g. a warp-level hazard: lanes of one warp with no sync between a read and
  # a write): any hazard counts as a failure here
  # (one summary a process)
  if [ $rc -eq 0 ] && [ "$(grep -c 'RACECHECK SUMMARY' "$OUT/$name.log")" != \
    "$(grep -c 'RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)' "$OUT/$name.log")" ]; then
    rc=1; echo "   racecheck reported hazards (see $OUT/$name.log)"
  fi
  echo "   rc=$rc ($(( $(date +%s) - t0 )) s)"; tail -n "${TAIL:-6}" "$OUT/$name.log"
  if [ $rc -ne 0 ] && [ "${FAILFAST:-0}" = 1 ]; then echo "FAILFAST: $name failed"; exit $rc; fi
  return 0
}
# verify at W ranks with each dispatch path (the suite's small shapes; every scenario, T = 0, 1, 33, 128, 300)
paths() {
  local w=$1
  for p in staged direct; do
    # dedup rides on the stage: staged runs every case with and without it, direct without
    local d=""; [ $p = direct ] && d=--no-dedup
    for f in --fp8 --no-fp8; do
      MOE_A2A_DISPATCH_PATH=$p run verify-w$w-$p$f timeout 240 $cli verify --transport cuda --world $w --experts 32 --hidden 512 \
        --topk 4 --tokens 0,1,33,128,300 --scenario random,dropped,skewed,ragged $f $d --calls ${PATH_CALLS:-2}
    done
  done
}
# batches past the stage's shared-memory ids (T*k > 4096: the send blocks read topkIdx from L2) at W ranks,
# both paths, dedup on and off on the stage
large() {
  local w=$1
  for p in staged direct; do
    for d in --dedup --no-dedup; do
      [ $p = direct ] && [ $d = --dedup ] && continue
      MOE_A2A_DISPATCH_PATH=$p run large$w-$p$d timeout 300 $cli verify --transport cuda --world $w --experts 32 --hidden 256 \
        --topk 8 --tokens 513,2048 --scenario random,dropped,skewed,ragged --fp8 $d --calls 2
    done
  done
}
# the bench at BENCH_W ranks beside DeepEP when deepep-build built it (waits for it up to DEEPEP_WAIT_S)
bench_ranks() {
  for i in $(seq 1 ${DEEPEP_WAIT_S:-200}); do [ -f /tmp/deepep.done ] && break; sleep 1; done
  local dep=""; [ -f /tmp/deepep.done ] && ls /tmp/deepep_bench/DeepEP/deep_ep_cpp*.so >/dev/null 2>&1 && dep="--deepep /tmp/deepep_bench/DeepEP"
  TAIL=80 run bench-w${BENCH_W:-2} timeout ${BENCH_S:-480} $cli bench --transport cuda --world ${BENCH_W:-2} --tokens ${BENCH_T:-1,32,128,512,4096} --iters ${BENCH_ITERS:-200} --warmup 20 $dep ${BENCH_ARGS:-}
  newest_results
}
# segment=us; for each segment of the bench's stamped split at T ($3) in log $1, the slowest of its W ($2) ranks
# (the per-rank columns follow it); $4: a pattern of segments to leave out
split_at() {
  sed -n "/where the time goes, T=$3 /,/whole call/p" "$1" | grep -E '^ *[a-z].*  [0-9]+\.[0-9]+ ' | grep -v "${4:-^$}" |
    awk -v w="$2" '{v=$(NF-w); $(NF-w)=""; for (i=NF-w+1; i<=NF; i++) $i=""; gsub(/ +$/, ""); printf "%s=%s; ", $0, v}'
}
# the bench's newest JSON + SVG (bench/results/ on this machine holds older runs too)
newest_results() { mkdir -p "$OUT/results" && ls -t bench/results/*-cuda-* 2>/dev/null | head -2 | xargs -r cp -t "$OUT/results/"; }
for step in "$@"; do
  case $step in
    driver) run driver timeout 120 node --test $TESTS/cuda-driver.test.js ;;
    smoke) run smoke timeout 120 $cli verify --transport cuda --world 1 --experts 8 --hidden 256 --topk 4 --tokens 8 ;;
    smoke2) run smoke2 timeout 120 $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8 ;;
    conformance) run conformance timeout 400 node --test $TESTS/cuda.conformance.test.js ;;
    # NCCL through koffi (src/net/nccl.ts) on two GPUs: NVLink, two simulated hosts (sockets), a rank that never joins
    nccl) MOE_A2A_NCCL_LIB=${MOE_A2A_NCCL_LIB:-$(ldconfig -p | grep -o '/[^ ]*libnccl.so.2$' | head -1)} \
            run nccl timeout 200 node --test $TESTS/nccl.test.js ;;
    # between hosts, simulated on this machine: each host's ranks get their own NCCL_HOSTID, so NCCL goes
    # between them through sockets on lo; verify bit-exact at W = 2 and 4 over 2 and 4 hosts, eager and graph
    hosts|hosts-long|hosts-fail|hosts-bench)
      export MOE_A2A_NCCL_LIB=${MOE_A2A_NCCL_LIB:-$(ldconfig -p | grep -o '/[^ ]*libnccl.so.2$' | head -1)}
      export MOE_A2A_SIMULATED_HOSTS=1 NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}
      if [ $step = hosts ]; then
        for wn in ${HOSTS_WN-2:2 4:2 4:4}; do
          w=${wn%:*}; n=${wn#*:}
          for d in ${HOSTS_DEDUP:---dedup --no-dedup}; do
            TAIL=3 run hosts-w$w-n$n$d timeout 300 $cli verify --transport cuda --world $w --nodes $n --experts 16 --hidden 256 \
              --topk 4 --tokens 0,1,33,128 --scenario random,dropped,skewed,ragged $d --calls 2
          done
        done
        TAIL=3 run hosts-graph timeout 200 $cli verify --transport cuda --graph --world 4 --nodes 2 --experts 16 --hidden 512 --topk 4 --tokens 32 --scenario random,skewed --calls ${GRAPH_CALLS:-200}
      elif [ $step = hosts-long ]; then
        # 1,000 consecutive calls, eager and graph-replayed (W = LONG_W over 2 hosts)
        for g in "" --graph; do
          TAIL=3 run hosts-long$g timeout 400 $cli verify --transport cuda $g --world ${LONG_W:-4} --nodes 2 --experts 16 --hidden 512 --topk 4 --tokens 16 --fp8 --scenario random --expert-layout packed --calls ${LONG_CALLS:-1000}
        done
      elif [ $step = hosts-bench ]; then
        TAIL=60 run hosts-bench timeout ${BENCH_S:-500} $cli bench --transport cuda --world ${HOSTS_BENCH_W:-4} --nodes 2 --tokens ${BENCH_T:-1,32,128,512} --iters ${BENCH_ITERS:-100} --warmup 10 --path dedup
        newest_results
      else
        MOE_A2A_TRACE=1 run hosts-fail timeout 400 node --test --test-name-pattern "hosts" $TESTS/cuda.conformance.test.js
      fi ;;
    # compute-sanitizer over the kernels between hosts (simulated; several processes may share one GPU):
    # W = 4 over 2 hosts (two owners a host: the pre-reduction sums two partials) and W = 2 over 2 without dedup
    hosts-sanitizer)
      export MOE_A2A_NCCL_LIB=${MOE_A2A_NCCL_LIB:-$(ldconfig -p | grep -o '/[^ ]*libnccl.so.2$' | head -1)}
      export MOE_A2A_SIMULATED_HOSTS=1 NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}
      for tool in memcheck racecheck; do
        run $tool-hosts-w4 timeout 300 compute-sanitizer --tool $tool --target-processes all $cli verify --transport cuda --world 4 --nodes 2 \
          --experts 16 --hidden 256 --topk 4 --tokens 8 --scenario random --dedup
      done
      run memcheck-hosts-w2 timeout 300 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 2 --nodes 2 \
        --experts 8 --hidden 256 --topk 4 --tokens 8 --scenario random --no-dedup ;;
    failures) MOE_A2A_TRACE=1 run failures timeout 300 node --test --test-name-pattern "rejects|never calls|throws" $TESTS/cuda.conformance.test.js ;;
    verify) TAIL=80 run verify timeout 300 $cli verify --transport cuda ;;
    v3w1)
      # W = 1 at the DeepSeek-V3 shape: small batches take ep_dispatch_local, T = 1024 ep_route + ep_dispatch
      # (the single-process reference takes about 2 s a call at this shape)
      TAIL=12 run v3w1 timeout 200 $cli verify --transport cuda --world 1 --tokens 128,600 --scenario random,skewed --calls 1
      TAIL=6 run v3w1graph timeout 160 $cli verify --transport cuda --graph --world 1 --tokens 128 --scenario random,skewed --calls 8 ;;
    long) run long timeout 280 $cli verify --transport cuda --world 2 --experts 16 --hidden 512 --topk 4 --tokens 16 --fp8 --scenario random --calls 10000 ;;
    sanitizer)
      run memcheck1 timeout 300 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 1 --experts 8 --hidden 256 --topk 4 --tokens 8
      run racecheck1 timeout 300 compute-sanitizer --tool racecheck --target-processes all $cli verify --transport cuda --world 1 --experts 8 --hidden 256 --topk 4 --tokens 8
      run memcheck2 timeout 300 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8
      run racecheck2 timeout 300 compute-sanitizer --tool racecheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8 ;;
    graph)
      run graph1 timeout 200 $cli verify --transport cuda --graph --world 1 --experts 16 --hidden 512 --topk 4 --tokens 32 --scenario random --calls 1000
      run graph2 timeout 200 $cli verify --transport cuda --graph --world 2 --experts 16 --hidden 512 --topk 4 --tokens 32 --scenario random,skewed --calls 200 ;;
    bench) TAIL=40 run bench timeout 400 $cli bench --transport cuda --world 1 --tokens 1,32,128,512,4096 --iters 200 --warmup 20
      newest_results ;;
    bench2) TAIL=12 run bench2 timeout 120 $cli bench --transport cuda --world 2 --tokens 128 --iters 100 --warmup 10
      newest_results ;;
    probe)
      # per-kernel device time without the TypeScript host (bench/micro/kernel_probe.cu), W = 1
      nvcc -O3 -fmad=false -std=c++17 -arch=sm_90a -DEP_PROBE -I kernels bench/micro/kernel_probe.cu -o /tmp/probe
      for T in ${PROBE_T:-1 32 128 256 512}; do rt=512; [ $T -gt 512 ] && rt=1024; TAIL=24 run probe-T$T /tmp/probe $T 500 $rt; done ;;
    flagprobe)
      # two GPUs: a fenced message against a flagged one, and a block's tail after NVLink stores (bench/micro/flag_probe.cu)
      nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/flag_probe.cu -o /tmp/flag_probe && TAIL=20 run flagprobe timeout 120 /tmp/flag_probe ;;
    planprobe)
      # one GPU: ep_combine_send's first loads when many warps start at once, without the library (bench/micro/plan_probe.cu)
      nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/plan_probe.cu -o /tmp/plan_probe && TAIL=20 run planprobe timeout 120 /tmp/plan_probe ;;
    stateprobe)
      # one GPU: a word every block loads at once after griddepcontrol.wait, on one line or on replicas (bench/micro/state_probe.cu)
      nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/state_probe.cu -o /tmp/state_probe && TAIL=40 run stateprobe timeout 120 /tmp/state_probe ;;
    sendprobe)
      # two GPUs: whether one warp's NVLink stores hold up other warps' loads on the same SM (bench/micro/send_probe.cu)
      nvcc -O3 -std=c++17 -arch=sm_90a bench/micro/send_probe.cu -o /tmp/send_probe && TAIL=20 run sendprobe timeout 120 /tmp/send_probe ;;
    launch)
      # the driver's own host cost per launch, in C (bench/micro/launch_cost.cu): the floor under the bench's host table
      nvcc -O3 -std=c++17 -arch=sm_90a -I kernels bench/micro/launch_cost.cu -lcuda -o /tmp/launch_cost && TAIL=20 run launch /tmp/launch_cost ;;
    profile)
      # per-kernel device time at T = 128 (W = 1, DeepSeek-V3 shape), clocks and caches as in real use
      TAIL=40 run profile timeout 300 ncu --clock-control none --cache-control none --graph-profiling node \
        -k regex:'^ep_(route|dispatch|combine)' --launch-skip 200 --launch-count 40 \
        --metrics gpu__time_duration.sum --csv \
        $cli bench --transport cuda --world 1 --tokens 128 --iters 40 --warmup 10 --no-baseline --no-json ;;
    deepep-build)
      # DeepEP (../shared/peers, copied into .peers/) built in the background; bench-w2 waits for it
      ( STAGE=build OUT=$OUT/deepep bash .peers/deepep_build_bench.sh > "$OUT/deepep-build.log" 2>&1; echo done > /tmp/deepep.done ) &
      echo "== deepep-build: started in the background" ;;
    ep)
      # one EP run at EP_W ranks (default 8, one GPU each), in one go: verify bit-exact (FP8 on and off,
      # dedup on and off, every routing scenario; the DeepSeek-V3 shape), 10,000 consecutive calls, then the
      # bench (serving loop, per phase, stamps) beside DeepEP (run deepep-build first) and PyTorch + NCCL
      local_w=${EP_W:-8}
      TAIL=4 run ep$local_w-verify timeout 500 $cli verify --transport cuda --world $local_w --experts $((local_w * 8)) --hidden 512 \
        --topk 4 --tokens 0,1,33,128,300 --scenario random,dropped,skewed,ragged --calls 2
      TAIL=6 run ep$local_w-v3 timeout 400 $cli verify --transport cuda --world $local_w --tokens 1,128 --scenario random,skewed --calls 1
      TAIL=3 run ep$local_w-long timeout 500 $cli verify --transport cuda --world $local_w --experts $((local_w * 4)) --hidden 512 \
        --topk 4 --tokens 16 --fp8 --scenario random --calls 10000 --dedup
      BENCH_W=$local_w BENCH_ARGS="--stamps 1,32,128,4096 ${BENCH_ARGS:-}" bench_ranks ;;
    walk2)
      # the row walkers with few blocks (MOE_A2A_WALK_BLOCKS): every warp walks many rows, through the pack's
      # batched lookups and the walkers' grid-stride loops, which the default grids reach only at large T
      for wb in 1 3; do
        for f in --fp8 --no-fp8; do
          MOE_A2A_WALK_BLOCKS=$wb run walk2-b$wb$f timeout 200 $cli verify --transport cuda --world 2 --experts 32 --hidden 512 \
            --topk 4 --tokens 0,1,33,300 --scenario random,dropped,skewed,ragged $f --calls 2
        done
      done
      MOE_A2A_WALK_BLOCKS=1 run memcheck2-walk1 timeout 300 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 2 \
        --experts 8 --hidden 256 --topk 4 --tokens 8,40 --dedup --fp8
      # the rail kernels too: W = 4 over 2 simulated hosts (several ranks may share a GPU)
      MOE_A2A_WALK_BLOCKS=2 MOE_A2A_SIMULATED_HOSTS=1 NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} \
        MOE_A2A_NCCL_LIB=${MOE_A2A_NCCL_LIB:-$(ldconfig -p | grep -o '/[^ ]*libnccl.so.2$' | head -1)} \
        run walk2-hosts timeout 200 $cli verify --transport cuda --world 4 --nodes 2 --experts 16 --hidden 256 --topk 4 \
        --tokens 0,1,33,128 --scenario random,ragged --calls 2 ;;
    paths2) paths 2 ;;
    large2) large 2 ;;
    large4) large 4 ;;
    paths4) paths 4 ;;
    v3w2)
      # the DeepSeek-V3 shape across two GPUs, both paths
      for p in staged direct; do
        d=""; [ $p = direct ] && d=--no-dedup
        MOE_A2A_DISPATCH_PATH=$p TAIL=8 run v3w2-$p timeout 300 $cli verify --transport cuda --world 2 --tokens 1,128 --scenario random,skewed --calls 1 $d
      done ;;
    long4) MOE_A2A_DISPATCH_PATH=${LONG_PATH:-staged} run long4 timeout 400 $cli verify --transport cuda --world 4 --experts 16 --hidden 512 --topk 4 --tokens 16 --fp8 --scenario random --calls ${LONG_CALLS:-10000} ${LONG_DEDUP:---no-dedup} ;;
    sanitizer2)
      for p in staged direct dedup; do
        e=$p; d=--no-dedup; [ $p = dedup ] && e=staged && d=--dedup
        MOE_A2A_DISPATCH_PATH=$e run memcheck2-$p timeout 300 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8 $d
        MOE_A2A_DISPATCH_PATH=$e run racecheck2-$p timeout 300 compute-sanitizer --tool racecheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8 $d
      done
      # T*k > 4096: the stage's send blocks read the ids from L2 (dedup on, the default)
      run memcheck2-large timeout 400 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 128 --topk 4 --tokens 1100 --scenario random --calls 1 --dedup --fp8
      run racecheck2-large timeout 400 compute-sanitizer --tool racecheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 128 --topk 4 --tokens 1100 --scenario random --calls 1 --dedup --fp8 ;;
    synccheck2)
      # every barrier reached by every thread of its block (compute-sanitizer synccheck), and racecheck with more
      # experts than a block has threads (the scans' several entries a thread), W = 2: both dispatch paths, and
      # the staged one with dedup
      for p in staged direct dedup; do
        e=$p; d=--no-dedup; [ $p = dedup ] && e=staged && d=--dedup
        MOE_A2A_DISPATCH_PATH=$e run synccheck2-$p timeout 300 compute-sanitizer --tool synccheck --target-processes all $cli verify --transport cuda --world 2 --experts 512 --hidden 256 --topk 8 --tokens 8 $d --calls 2
        MOE_A2A_DISPATCH_PATH=$e run racecheck2-e512-$p timeout 300 compute-sanitizer --tool racecheck --target-processes all $cli verify --transport cuda --world 2 --experts 512 --hidden 256 --topk 8 --tokens 8 $d --calls 2
      done ;;
    bench-w2) bench_ranks ;;
    ab)
      # a kernel-only A/B: the serving loop at AB_W ranks (default 2), alternated AB_RUNS times (default 2) between
      # this build's kernels and AB_FATBIN's (another build: nvcc -fatbin ... -o F kernels/ep.cu), with the stamps'
      # split at AB_STAMPS; the rows printed per run (T, graph loop us), then the segments at each stamped T
      [ -f "${AB_FATBIN:-}" ] || { echo "ab: AB_FATBIN (a fatbin file) is not set or missing"; exit 1; }
      aw=${AB_W:-2} at=${AB_T:-1,32,128,512,4096} as=${AB_STAMPS:-1,128}
      for i in $(seq 1 ${AB_RUNS:-2}); do
        for v in build other; do
          fb=""; [ $v = other ] && fb=$AB_FATBIN
          MOE_A2A_FATBIN=$fb TAIL=0 run ab-w$aw-$v-$i timeout 200 $cli bench --transport cuda --world $aw --tokens $at \
            --iters ${AB_ITERS:-100} --warmup 20 --no-baseline --no-json --path dedup --stamps $as
          f=$OUT/ab-w$aw-$v-$i.log
          echo "   $v $i: $(sed -n '/serving loop/,/^per call/p' $f | grep -E '^ *[0-9]+ +(dedup|direct|staged)' | awk '{print $1 "=" $4}' | tr '\n' ' ')"
          for T in $(echo $as | tr , ' '); do
            echo "     T=$T: $(split_at $f $aw $T)"
          done
        done
      done ;;
    flagged2)
      # flagged partials across two GPUs (README, "Flagged partials"): verify on both sides of the limit (ragged
      # mixes flagged and unflagged ranks in one call), the DeepSeek-V3 shape, the failure cases on one host,
      # then the serving loop with flags off and on, alternated
      for f in --fp8 --no-fp8; do
        run flagged-verify$f timeout 150 $cli verify --transport cuda --world 2 --experts 32 --hidden 512 --topk 4 \
          --tokens 0,1,8,32,33,128 --scenario random,dropped,skewed,ragged $f --dedup --calls 3
      done
      run flagged-v3 timeout 150 $cli verify --transport cuda --world 2 --tokens 1,32 --scenario random,skewed,ragged --calls 2 --dedup
      TAIL=3 run flagged-failures timeout 200 node --test --test-name-pattern '^(?!.*hosts).*(never calls|throws|refuses|rejects)' $TESTS/cuda.conformance.test.js
      for i in 1 2; do
        for m in 0 32; do
          MOE_A2A_FLAGGED_MAX_TOKENS=$m TAIL=0 run flagged-bench-f$m-$i timeout 150 $cli bench --transport cuda --world 2 \
            --tokens 1,8,32,128 --iters 200 --warmup 20 --no-baseline --path dedup --stamps 1
          sed -n '/serving loop/,/^per call/p' "$OUT/flagged-bench-f$m-$i.log" | grep -E '^ *[0-9]+ +dedup'
        done
      done ;;
    diag)
      # where a kernel's segment goes (bench/NOTES.md v31): fatbins with -DEP_DIAG=n move the stamp that ends a
      # kernel's segment to point n inside it (the list: kernels/ep_limits.cuh); the bench's split at DIAG_T (default
      # "1 128"; point 41 wants 4096) and DIAG_W ranks (default 2). The fatbins are built here, in parallel, into a
      # folder named after the kernels' sources (DIAG_DIR: one of your own); the SASS of each point's kernel goes to
      # $OUT, for checking where ptxas put the point. DIAG_FLAGS: more nvcc flags for every point's build (an A/B
      # macro such as -DEP_SEND_FIRST=0); point 0 is then the flags' build with no point
      df=${DIAG_FLAGS:-} tag=""
      [ -n "$df" ] && tag=-$(echo "$df" | md5sum | cut -c1-6)
      dd=${DIAG_DIR:-/tmp/diag-$(cat kernels/*.cu kernels/*.cuh kernels/*.h | md5sum | cut -c1-12)}
      dw=${DIAG_W:-2} dt=${DIAG_T:-"1 128"} pts=${DIAG_POINTS:-"31 32 21 22 23 11 12 13 14 15 16 17 18"}
      mkdir -p "$dd"
      for n in $pts; do
        [ -f "$dd/d$n$tag.fatbin" ] || { nvcc -fatbin -O3 -fmad=false -std=c++17 -gencode=arch=compute_90a,code=sm_90a \
          -DEP_DIAG=$n $df -I kernels -o "$dd/d$n$tag.tmp" kernels/ep.cu && mv "$dd/d$n$tag.tmp" "$dd/d$n$tag.fatbin"; } &
      done
      wait
      for n in main $pts; do
        fb="" t=$tag
        [ $n = main ] && t=""  # (main: the default fatbin, whatever DIAG_FLAGS says; point 0 is the flags' build)
        if [ $n != main ]; then
          fb=$dd/d$n$t.fatbin
          [ -f "$fb" ] || { echo "   d$n$t: no fatbin (nvcc failed)"; continue; }
        fi
        MOE_A2A_FATBIN=$fb TAIL=0 run diag-w$dw-$n$t timeout 150 $cli bench --transport cuda --world $dw \
          --tokens "$(echo $dt | tr ' ' ,)" --iters 100 --warmup 20 --no-baseline --no-json --path dedup --stamps "$(echo $dt | tr ' ' ,)"
        for T in $dt; do  # label=value, the slowest rank's, for the segments the call wrote
          echo "   d$n$t T=$T: $(split_at "$OUT/diag-w$dw-$n$t.log" $dw $T 'whole call')"
        done
        case $n in 1*) k=ep_combine_send ;; 2*) k=ep_stage_pack ;; 3*) k=ep_stage_send ;; 4*) k=ep_stage_send_large ;; 5*) k=ep_combine_reduce_dedup ;; *) k="" ;; esac
        [ -n "$k" ] && cuobjdump -sass -fun $k "$fb" 2>&1 | grep -E 'GLOBALTIMER|LDG|ATOMG|RED|BAR|SHFL' > "$OUT/diag-d$n$t-$k.sass.txt"
      done ;;
    flaggedlimit)
      # where flagged partials stop paying (bench/NOTES.md, next step 10): the serving loop at W = 2 and 4 (4 GPUs)
      # with MOE_A2A_FLAGGED_MAX_TOKENS 0 (off), 8, 16, 32, alternated twice; stamps at T = 32. The variable only
      # lowers flaggedMaxTokens(W) (v24: 16 at W = 4, so 32 there runs as 16); to time past it, use a build before v24
      for i in 1 2; do
        for w in 2 4; do
          for m in 0 8 16 32; do
            MOE_A2A_FLAGGED_MAX_TOKENS=$m TAIL=0 run flaggedlimit-w$w-f$m-$i timeout 150 $cli bench --transport cuda --world $w \
              --tokens 1,8,16,32 --iters 200 --warmup 20 --no-baseline --no-json --path dedup --stamps 32
            echo "   W=$w limit $m:"; sed -n '/serving loop/,/^per call/p' "$OUT/flaggedlimit-w$w-f$m-$i.log" | grep -E '^ *[0-9]+ +dedup'
          done
        done
      done ;;
    *) echo "unknown step $step" ;;
  esac
done
