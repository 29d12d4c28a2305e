#!/usr/bin/env python3
"""PyTorch + NCCL baseline: MoE dispatch + combine over W ranks, the usual way.

Each rank holds T tokens and routes them to k of E experts (E/W experts per rank):

  dispatch  stable argsort of the T*k expert ids, per-expert counts (bincount),
            count exchange with all_to_all_single, .tolist() of the per-rank row
            counts (the host sync a user needs to size the receive buffer),
            gather of the rows into expert-sorted order, all_to_all_single of the
            bf16 rows (or, with --fp8, FP8 e4m3 group quantisation and two
            all_to_all_single calls: the e4m3 bytes and the f32 scales).
  expert    identity stand-in, NOT timed (with --fp8 it dequantises to bf16).
  combine   all_to_all_single of the bf16 expert outputs back to their origin,
            weighted scatter-sum (index_add_ in f32) into y [T, H], cast to bf16.

Timing: torch.cuda.synchronize() + dist.barrier() before every iteration, CUDA
events around dispatch and combine; per iteration each phase is the slowest
rank's time (all_reduce MAX). Launch with torchrun; also runs as a plain
`python3 torch_nccl.py` (WORLD_SIZE = 1). Rank 0 prints a human table on stderr
and, as the LAST stdout line, one JSON object (see bench/baselines/README.md).
"""

import os

# NVLink SHARP (multicast) stays off on the lent machines; see DESIGN.md / KINDS.md.
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

try:
    import torch
    import torch.distributed as dist
    _TORCH_IMPORT_ERROR = None
except Exception as exc:  # torch not installed: reported as a JSON error line
    torch = None
    dist = None
    _TORCH_IMPORT_ERROR = exc

FP8_E4M3_MAX = 448.0


# ----------------------------------------------------------------------------
# The work being measured
# ----------------------------------------------------------------------------

def quantize_fp8(rows, group_size):
    """rows bf16 [N, H] -> (q float8_e4m3fn [N, H], scales f32 [N, H/G]);
    scale = amax / 448 per group, an all-zero group gets scale 1."""
    n, h = rows.shape
    g = rows.float().view(n, h // group_size, group_size)
    amax = g.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    # Clamp first: PyTorch's float -> e4m3fn conversion does not saturate.
    q = (g / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return q.view(n, h), scale.view(n, h // group_size)


def dequantize_fp8(q, scales, group_size):
    """(q e4m3 [N, H], scales f32 [N, H/G]) -> bf16 [N, H]."""
    n, h = q.shape
    g = q.float().view(n, h // group_size, group_size) * scales.unsqueeze(-1)
    return g.view(n, h).to(torch.bfloat16)


def dispatch(x, topk_idx, cfg, world):
    """x bf16 [T, H], topk_idx int64 [T, k] -> (received, handle).

    received: bf16 [R, H], or (e4m3 [R, H], f32 [R, H/G]) with --fp8, where R is
    the number of rows all ranks sent me: source-major (rank 0's rows first), and
    within each source block sorted by my local expert.
    handle: what combine needs (sort order, source tokens, split sizes)."""
    k = topk_idx.shape[1]
    hidden = x.shape[1]
    experts_per_rank = cfg.experts // world
    flat = topk_idx.reshape(-1).long()
    order = torch.argsort(flat, stable=True)            # pair indices, expert-sorted
    src_token = torch.div(order, k, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=cfg.experts)  # int64 [E] = [W, E/W]
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts)         # [W, E/W]: src s, my expert e
    send_rows = counts.view(world, experts_per_rank).sum(dim=1)
    recv_rows = recv_counts.view(world, experts_per_rank).sum(dim=1)
    splits = torch.cat([send_rows, recv_rows]).tolist()  # host sync
    send_splits, recv_splits = splits[:world], splits[world:]
    n_recv = sum(recv_splits)
    rows = x.index_select(0, src_token)                 # [T*k, H], expert-sorted
    if cfg.fp8:
        q, scales = quantize_fp8(rows, cfg.group_size)
        recv_q = torch.empty((n_recv, hidden), dtype=torch.uint8, device=x.device)
        dist.all_to_all_single(recv_q, q.view(torch.uint8),
                               output_split_sizes=recv_splits, input_split_sizes=send_splits)
        recv_s = torch.empty((n_recv, hidden // cfg.group_size), dtype=torch.float32,
                             device=x.device)
        dist.all_to_all_single(recv_s, scales,
                               output_split_sizes=recv_splits, input_split_sizes=send_splits)
        received = (recv_q.view(torch.float8_e4m3fn), recv_s)
    else:
        received = torch.empty((n_recv, hidden), dtype=torch.bfloat16, device=x.device)
        dist.all_to_all_single(received, rows,
                               output_split_sizes=recv_splits, input_split_sizes=send_splits)
    handle = (order, src_token, send_splits, recv_splits)
    return received, handle


def expert_standin(received, cfg):
    """Identity expert (untimed): bf16 rows pass through; FP8 rows are dequantised."""
    if cfg.fp8:
        return dequantize_fp8(received[0], received[1], cfg.group_size)
    return received


def combine(expert_out, handle, weights):
    """expert_out bf16 [R, H] (as received), weights f32 [T, k] -> y bf16 [T, H]."""
    order, src_token, send_splits, recv_splits = handle
    t = weights.shape[0]
    hidden = expert_out.shape[1]
    back = torch.empty((sum(send_splits), hidden), dtype=torch.bfloat16,
                       device=expert_out.device)
    dist.all_to_all_single(back, expert_out,
                           output_split_sizes=send_splits, input_split_sizes=recv_splits)
    # back[i] is the output for pair order[i] = (token src_token[i], j = order[i] % k).
    w_sorted = weights.reshape(-1).index_select(0, order)
    y = torch.zeros((t, hidden), dtype=torch.float32, device=expert_out.device)
    y.index_add_(0, src_token, back.float() * w_sorted.unsqueeze(1))
    return y.to(torch.bfloat16)


# ----------------------------------------------------------------------------
# Inputs, checks, timing
# ----------------------------------------------------------------------------

def make_inputs(tokens, cfg, seed, device):
    """x bf16 [T, H] ~ N(0, 1); topk_idx int64 [T, k], k distinct experts per token
    drawn uniformly from E; weights f32 [T, k], positive, summing to 1 per token."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    x = torch.randn(tokens, cfg.hidden, generator=gen, dtype=torch.float32)
    topk_idx = torch.rand(tokens, cfg.experts, generator=gen).topk(cfg.topk, dim=1).indices
    w = torch.rand(tokens, cfg.topk, generator=gen, dtype=torch.float32) + 0.05
    w = w / w.sum(dim=1, keepdim=True)
    return (x.to(torch.bfloat16).to(device), topk_idx.to(torch.int64).to(device),
            w.to(device))


def reference_y(x, weights, cfg):
    """With an identity expert, y[t] = row(x[t]) * sum_j w[t, j], where row() is
    x itself (bf16) or dequant(quant(x)) (FP8)."""
    rows = x
    if cfg.fp8:
        q, s = quantize_fp8(x, cfg.group_size)
        rows = dequantize_fp8(q, s, cfg.group_size)
    return (rows.float() * weights.sum(dim=1, keepdim=True)).to(torch.bfloat16)


def percentile(sorted_vals, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(vals, prefix):
    s = sorted(vals)
    return {
        prefix + "median_us": round(percentile(s, 0.5), 3),
        prefix + "p10_us": round(percentile(s, 0.1), 3),
        prefix + "p90_us": round(percentile(s, 0.9), 3),
    }


def bench_tokens(tokens, cfg, rank, world, local_rank, device):
    x, topk_idx, weights = make_inputs(tokens, cfg, cfg.seed + 1000003 * rank, device)
    samples = []  # per timed iteration: [dispatch_us, combine_us, total_us]
    y = None
    for it in range(cfg.warmup + cfg.iters):
        torch.cuda.synchronize()
        dist.barrier(device_ids=[local_rank])
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record()
        received, handle = dispatch(x, topk_idx, cfg, world)
        ev[1].record()
        expert_out = expert_standin(received, cfg)
        ev[2].record()
        y = combine(expert_out, handle, weights)
        ev[3].record()
        torch.cuda.synchronize()
        if it >= cfg.warmup:
            d = ev[0].elapsed_time(ev[1]) * 1000.0
            c = ev[2].elapsed_time(ev[3]) * 1000.0
            samples.append([d, c, d + c])

    # Correctness of the last iteration, worst rank.
    y_ref = reference_y(x, weights, cfg)
    err = (y.float() - y_ref.float()).abs().max()
    scale = y_ref.float().abs().max().clamp_min(1e-6)
    rel = (err / scale).reshape(1).double()
    dist.all_reduce(rel, op=dist.ReduceOp.MAX)
    max_rel_err = rel.item()

    # The collective is as slow as its slowest rank: max over ranks per iteration.
    times = torch.tensor(samples, dtype=torch.float64, device=device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    times = times.cpu().tolist()
    entry = {"tokens": tokens}
    entry.update(summarize([s[0] for s in times], "dispatch_"))
    entry.update(summarize([s[1] for s in times], "combine_"))
    entry.update(summarize([s[2] for s in times], "total_"))
    entry["max_rel_err"] = max_rel_err
    entry["check"] = "ok" if math.isfinite(max_rel_err) and max_rel_err <= 2e-2 else "FAILED"
    return entry


def nccl_version():
    try:
        v = torch.cuda.nccl.version()
    except Exception:
        return None
    return ".".join(str(p) for p in v) if isinstance(v, tuple) else str(v)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="1,32,128,512,4096",
                   help="comma-separated tokens per rank T (default 1,32,128,512,4096)")
    p.add_argument("--hidden", type=int, default=7168, help="H, bf16 values per row")
    p.add_argument("--topk", type=int, default=8, help="k, experts per token")
    p.add_argument("--experts", type=int, default=256, help="E, experts over all ranks")
    p.add_argument("--group-size", type=int, default=128, help="G, FP8 group size")
    p.add_argument("--fp8", action="store_true",
                   help="send FP8 e4m3 rows + f32 scales in dispatch (combine stays bf16)")
    p.add_argument("--iters", type=int, default=200, help="timed iterations")
    p.add_argument("--warmup", type=int, default=20, help="untimed warm-up iterations")
    p.add_argument("--seed", type=int, default=0, help="seed (rank r uses seed + 1000003 r)")
    p.add_argument("--nodes", type=int, default=1,
                   help="hosts the ranks span; with MOE_A2A_SIMULATED_HOSTS=1 each host's ranks get "
                        "their own NCCL_HOSTID, so NCCL goes between them as between hosts")
    args = p.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    if not args.tokens or min(args.tokens) < 1:
        p.error("--tokens needs positive integers")
    if args.hidden % args.group_size:
        p.error("--hidden must be a multiple of --group-size")
    if not 1 <= args.topk <= args.experts:
        p.error("--topk must be in [1, --experts]")
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    env_rank = int(os.environ.get("RANK", "0"))
    if torch is None:
        if env_rank == 0:
            print(json.dumps({"error": "torch is not importable: %s" % _TORCH_IMPORT_ERROR}))
        return 0
    if not torch.cuda.is_available() or not dist.is_available() or not dist.is_nccl_available():
        if env_rank == 0:
            print(json.dumps({"error": "torch %s lacks CUDA or NCCL" % torch.__version__}))
        return 0

    # A plain `python3 torch_nccl.py` is a one-rank job.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if cfg.experts % world:
        if rank == 0:
            print(json.dumps({"error": "--experts %d is not a multiple of WORLD_SIZE %d"
                              % (cfg.experts, world)}))
        return 0
    if cfg.fp8 and not hasattr(torch, "float8_e4m3fn"):
        if rank == 0:
            print(json.dumps({"error": "torch %s has no float8_e4m3fn" % torch.__version__}))
        return 0

    if cfg.nodes > 1 and world % cfg.nodes:
        if rank == 0:
            print(json.dumps({"error": "WORLD_SIZE %d is not a multiple of --nodes %d" % (world, cfg.nodes)}))
        return 0
    if cfg.nodes > 1 and os.environ.get("MOE_A2A_SIMULATED_HOSTS") == "1":
        # the same wire as moe-a2a's simulated hosts (before NCCL starts: it reads this once)
        os.environ.setdefault("NCCL_HOSTID", "moe-a2a-simulated-host-%d" % (rank // (world // cfg.nodes)))
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl")
    try:
        if rank == 0:
            print("torch_nccl: %s, torch %s, W=%d, H=%d k=%d E=%d %s, %d iters (+%d warm-up)"
                  % (torch.cuda.get_device_name(), torch.__version__, world, cfg.hidden,
                     cfg.topk, cfg.experts,
                     "FP8 G=%d dispatch" % cfg.group_size if cfg.fp8 else "bf16",
                     cfg.iters, cfg.warmup), file=sys.stderr)
            print("%7s %12s %12s %12s %12s %12s" % (
                "tokens", "dispatch_us", "combine_us", "total_us", "total_p10", "total_p90"),
                file=sys.stderr)
        results = []
        for t in cfg.tokens:
            entry = bench_tokens(t, cfg, rank, world, local_rank, device)
            results.append(entry)
            if rank == 0:
                print("%7d %12.1f %12.1f %12.1f %12.1f %12.1f  %s" % (
                    t, entry["dispatch_median_us"], entry["combine_median_us"],
                    entry["total_median_us"], entry["total_p10_us"], entry["total_p90_us"],
                    entry["check"]), file=sys.stderr)
            torch.cuda.empty_cache()
        if rank == 0:
            print(json.dumps({
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "nccl": nccl_version(),
                "world": world,
                "fp8": cfg.fp8,
                "config": {"hidden": cfg.hidden, "topk": cfg.topk, "experts": cfg.experts,
                           "group_size": cfg.group_size, "iters": cfg.iters,
                           "warmup": cfg.warmup, "seed": cfg.seed},
                "results": results,
            }))
            sys.stdout.flush()
    except Exception as exc:
        # No destroy_process_group here: peers may be stuck in a collective.
        # torchrun tears the job down when this rank exits non-zero.
        if rank == 0:
            text = " ".join(("%s: %s" % (type(exc).__name__, exc)).split())
            print(json.dumps({"error": text[:400]}))
            sys.stdout.flush()
        raise
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
