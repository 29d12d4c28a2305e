"""DeepEP's low-latency dispatch + combine, timed exactly as `moe-a2a bench` times its own.

One process per GPU (this script spawns them). For each T (tokens per rank): FP8 dispatch and bf16
combine at the given shape, uniform routing (k distinct experts per token), then
  * the serving loop: one CUDA graph of dispatch + combine (one layer), replayed `--iters` times back
    to back with no host barrier between replays; the ranks are aligned once on the device before the
    loop (a one-element NCCL all_reduce on the stream); mean microseconds per layer per rank;
  * one layer alone: the same graph replayed right after such an all_reduce (ranks aligned on the
    device), CUDA events around the replay; median over iterations of the slowest rank. (Dispatch and
    combine are not timed apart: DeepEP's low-latency buffers alternate with every call, and a captured
    graph bakes in the parity, so a graph of one dispatch, or of one combine, cannot be replayed alone.)
A cheap check first: every rank's per-expert receive counts equal what all ranks' routing says.

Needs `deep_ep` importable from --deepep (a DeepEP checkout built in place, e.g. by
../shared/peers/deepep_build_bench.sh: /tmp/deepep_bench/DeepEP) and torch with CUDA and NCCL.
The last stdout line is one JSON object (rank 0), or {"error": "..."}.
"""
import argparse
import json
import os
import random
import socket
import sys
import traceback


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deepep", required=True, help="folder holding an importable deep_ep (a built DeepEP checkout)")
    p.add_argument("--world", type=int, default=2, help="ranks, one GPU each")
    p.add_argument("--tokens", default="1,32,128,512", help="tokens per rank, comma-separated")
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--iters", type=int, default=200, help="layers in the serving loop, and per-phase iterations")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    a.tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    return a


def nmax_for(tokens, world):
    # DeepEP asserts (world * num_max_dispatch_tokens_per_rank) % 4 == 0
    m = max(1, tokens)
    while (m * world) % 4:
        m += 1
    return m


def rank_main(local_rank, args, port, out):
    import torch
    import torch.distributed as dist

    # NVLink only: no NVSHMEM transport over IB, no NVLink multicast
    for k, v in (("DEEPEP_NVSHMEM_IB_ENABLE_IBGDA", "0"), ("NVSHMEM_REMOTE_TRANSPORT", "none"),
                 ("NVSHMEM_DISABLE_NVLS", "1"), ("NCCL_NVLS_ENABLE", "0"),
                 ("NVSHMEM_BOOTSTRAP_UID_SOCK_IFNAME", "lo")):
        os.environ.setdefault(k, v)
    sys.path.insert(0, args.deepep)
    import deep_ep

    W = args.world
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:%d" % port, world_size=W, rank=local_rank)
    group = dist.new_group(list(range(W)))
    E, H, k = args.experts, args.hidden, args.topk
    epr = E // W
    max_nmax = max(nmax_for(t, W) for t in args.tokens)
    if int(os.environ.get("NVSHMEM_QP_DEPTH", "0")) < 2 * (max_nmax + 1):
        depth = 1024
        while depth < 2 * (max_nmax + 1):
            depth *= 2
        os.environ["NVSHMEM_QP_DEPTH"] = str(depth)
    rdma = deep_ep.Buffer.get_low_latency_rdma_size_hint(max_nmax, H, W, E)
    buf = deep_ep.Buffer(group, num_rdma_bytes=rdma, low_latency_mode=True, num_qps_per_rank=epr,
                         allow_nvlink_for_low_latency_mode=True, explicitly_destroy=True)
    align_t = torch.zeros(1, device="cuda")

    def align():
        # ranks leave an all_reduce together: what follows on the stream starts aligned on the device
        dist.all_reduce(align_t, group=group)

    def graph_of(fn):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, capture_error_mode="thread_local"):
            fn()
        torch.cuda.synchronize()
        return g

    results = []
    for T in args.tokens:
        nmax = nmax_for(T, W)
        gen = torch.Generator(device="cuda")
        gen.manual_seed(args.seed * 1000003 + local_rank)
        x = torch.randn((T, H), dtype=torch.bfloat16, device="cuda", generator=gen)
        scores = torch.rand((T, E), device="cuda", generator=gen)
        topk_idx = scores.topk(k, dim=1).indices.to(deep_ep.topk_idx_t)
        weights = torch.rand((T, k), dtype=torch.float32, device="cuda", generator=gen) + 0.1
        buf.clean_low_latency_buffer(nmax, H, E)
        torch.cuda.synchronize()
        dist.barrier(group=group)

        # check: receive counts per local expert against every rank's routing
        everyone = torch.empty((W, T, k), dtype=topk_idx.dtype, device="cuda")
        dist.all_gather_into_tensor(everyone, topk_idx, group=group)
        mine = local_rank * epr + torch.arange(epr, device="cuda")
        expected = (everyone.view(-1, 1) == mine.view(1, -1)).sum(0).to(torch.int)
        recv_x, recv_count, handle, _, _ = buf.low_latency_dispatch(x, topk_idx, nmax, E, use_fp8=True)
        counts_ok = bool(torch.equal(recv_count, expected))
        expert_out = torch.randn(recv_x[0].shape, dtype=torch.bfloat16, device="cuda", generator=gen)

        def dispatch():
            return buf.low_latency_dispatch(x, topk_idx, nmax, E, use_fp8=True, async_finish=False,
                                            return_recv_hook=False)

        def layer():
            _, _, h, _, _ = dispatch()
            buf.low_latency_combine(expert_out, topk_idx, weights, h)

        step = graph_of(layer)
        for _ in range(args.warmup):
            step.replay()
        align()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            step.replay()
        end.record()
        torch.cuda.synchronize()
        loop_us = start.elapsed_time(end) * 1e3 / args.iters

        # one layer at a time, each replay right after an all_reduce
        step_us = []
        for i in range(args.warmup + args.iters):
            align()
            start.record()
            step.replay()
            end.record()
            torch.cuda.synchronize()
            if i >= args.warmup:
                step_us.append(start.elapsed_time(end) * 1e3)
        del step
        results.append({"tokens": T, "nmax": nmax, "loop_us": loop_us, "step_us": step_us, "counts_ok": counts_ok})
        torch.cuda.synchronize()
        dist.barrier(group=group)

    gathered = [None] * W
    dist.all_gather_object(gathered, results, group=group)
    if local_rank == 0:
        def median(v):
            s = sorted(v)
            return s[len(s) // 2]
        rows = []
        for i, T in enumerate(args.tokens):
            per = [g[i] for g in gathered]
            n = min(len(p["step_us"]) for p in per)
            step = [max(p["step_us"][j] for p in per) for j in range(n)]
            rows.append({
                "tokens": T,
                "num_max_dispatch_tokens_per_rank": per[0]["nmax"],
                "loop_us": max(p["loop_us"] for p in per),
                "loop_us_per_rank": [round(p["loop_us"], 3) for p in per],
                "step_median_us": median(step),
                "check": "ok" if all(p["counts_ok"] for p in per) else "receive counts differ from the routing",
            })
        prop = torch.cuda.get_device_properties(0)
        with open(out, "w") as f:
            json.dump({"device": prop.name, "torch": torch.__version__, "deepep": args.deepep, "world": W,
                       "config": {"hidden": H, "topk": k, "experts": E, "iters": args.iters,
                                  "warmup": args.warmup, "fp8_dispatch": True},
                       "results": rows}, f)
    buf.destroy()
    dist.barrier(group=group)
    dist.destroy_process_group()


def main(argv=None):
    args = parse(argv)
    try:
        import torch
        import torch.multiprocessing as mp
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": "torch is not importable: %s" % e}))
        return 0
    sys.path.insert(0, args.deepep)
    try:
        import deep_ep  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": "deep_ep is not importable from %s: %s" % (args.deepep, e)}))
        return 0
    if torch.cuda.device_count() < args.world:
        print(json.dumps({"error": "%d GPUs, --world %d" % (torch.cuda.device_count(), args.world)}))
        return 0
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = "/tmp/deepep_ll_%d_%d.json" % (os.getpid(), random.randrange(1 << 30))
    try:
        mp.spawn(rank_main, args=(args, port, out), nprocs=args.world)
        with open(out) as f:
            print(json.dumps(json.load(f)))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(json.dumps({"error": ("%s" % e)[:400]}))
        return 1
    finally:
        if os.path.exists(out):
            os.remove(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
