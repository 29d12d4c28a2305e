#!/usr/bin/env bash
# The GPU checks in one go (see README "On a GPU"). Builds nothing: it uses dist/ and the tests
# compiled into .device/build/ by `npm run build:device`. Logs go to $OUT.
# Usage: scripts/device-check.sh <step>...
#   steps: driver smoke smoke2 conformance failures verify v3w1 long graph sanitizer bench bench2 probe launch profile
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
cli="node dist/cli/main.js"
run() { local name=$1; shift; echo "== $name: $*"; local t0=$(date +%s); "$@" > "$OUT/$name.log" 2>&1; local rc=$?; echo "   rc=$rc ($(( $(date +%s) - t0 )) s)"; tail -n "${TAIL:-6}" "$OUT/$name.log"; return 0; }
# the bench's newest JSON + SVG (bench/results/ on this machine holds older runs too)
newest_results() { mkdir -p "$OUT/results" && ls -t bench/results/*-cuda-* 2>/dev/null | head -2 | xargs -r cp -t "$OUT/results/"; }
for step in "$@"; do
  case $step in
    driver) run driver timeout 120 node --test .device/build/test/cuda-driver.test.js ;;
    smoke) run smoke $cli verify --transport cuda --world 1 --experts 8 --hidden 256 --topk 4 --tokens 8 ;;
    smoke2) run smoke2 $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8 ;;
    conformance) run conformance timeout 400 node --test .device/build/test/cuda.conformance.test.js ;;
    failures) MOE_A2A_TRACE=1 run failures timeout 300 node --test --test-name-pattern "rejects|never calls|throws" .device/build/test/cuda.conformance.test.js ;;
    verify) TAIL=80 run verify timeout 300 $cli verify --transport cuda ;;
    v3w1)
      # W = 1 at the DeepSeek-V3 shape: small batches take ep_dispatch_local, T = 1024 ep_route + ep_dispatch
      # (the single-process reference takes about 2 s a call at this shape)
      TAIL=12 run v3w1 timeout 200 $cli verify --transport cuda --world 1 --tokens 128,600 --scenario random,skewed --calls 1
      TAIL=6 run v3w1graph timeout 160 $cli verify --transport cuda --graph --world 1 --tokens 128 --scenario random,skewed --calls 8 ;;
    long) run long timeout 280 $cli verify --transport cuda --world 2 --experts 16 --hidden 512 --topk 4 --tokens 16 --fp8 --scenario random --calls 10000 ;;
    sanitizer)
      run memcheck1 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 1 --experts 8 --hidden 256 --topk 4 --tokens 8
      run racecheck1 compute-sanitizer --tool racecheck --target-processes all $cli verify --transport cuda --world 1 --experts 8 --hidden 256 --topk 4 --tokens 8
      run memcheck2 compute-sanitizer --tool memcheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8
      run racecheck2 compute-sanitizer --tool racecheck --target-processes all $cli verify --transport cuda --world 2 --experts 8 --hidden 256 --topk 4 --tokens 8 ;;
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
    launch)
      # the driver's own host cost per launch, in C (bench/micro/launch_cost.cu): the floor under the bench's host table
      nvcc -O3 -std=c++17 -arch=sm_90a -I kernels bench/micro/launch_cost.cu -lcuda -o /tmp/launch_cost && TAIL=20 run launch /tmp/launch_cost ;;
    profile)
      # per-kernel device time at T = 128 (W = 1, DeepSeek-V3 shape), clocks and caches as in real use
      TAIL=40 run profile timeout 300 ncu --clock-control none --cache-control none --graph-profiling node \
        -k regex:'^ep_(route|dispatch|combine)' --launch-skip 200 --launch-count 40 \
        --metrics gpu__time_duration.sum --csv \
        $cli bench --transport cuda --world 1 --tokens 128 --iters 40 --warmup 10 --no-baseline --no-json ;;
    *) echo "unknown step $step" ;;
  esac
done
