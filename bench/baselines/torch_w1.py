#!/usr/bin/env python3
"""PyTorch baseline: MoE dispatch + combine at W = 1 (one GPU, no communication).

The work a PyTorch user does around the experts of one MoE layer, on one GPU:

  dispatch  topk_idx [T, k] -> stable argsort of the T*k expert ids, gather the
            token rows into expert-sorted order, FP8 e4m3 group quantisation
            (G values per group, f32 scale = amax / 448, all-zero group -> 1),
            per-expert counts (a graph-safe bincount).
  combine   expert outputs bf16 [T*k, H] in expert-sorted order -> scatter back
            to (token, j) pair order, y[t] = sum_j w[t, j] * out[t, j] in f32,
            cast to bf16.

The expert itself is not timed: combine reads a fixed bf16 buffer holding the
dequantised dispatched rows (computed once, outside the timed region).

Three variants of the same Python function: eager, one CUDA graph of the whole
dispatch + combine (static input buffers), and torch.compile.

Timing: CUDA events around each iteration, torch.cuda.synchronize() between
iterations (every iteration starts on an idle GPU, so eager launch overhead is
counted). Human table on stderr; the LAST stdout line is one JSON object
(see bench/baselines/README.md).
"""

import argparse
import json
import math
import sys

try:
    import torch
    _TORCH_IMPORT_ERROR = None
except Exception as exc:  # torch not installed: reported as a JSON error line
    torch = None
    _TORCH_IMPORT_ERROR = exc

FP8_E4M3_MAX = 448.0
VARIANTS = ("eager", "graph", "compile")


# ----------------------------------------------------------------------------
# The work being measured (pure functions of tensors; no host synchronisation)
# ----------------------------------------------------------------------------

def quantize_fp8(rows, group_size):
    """rows bf16 [N, H] -> (q float8_e4m3fn [N, H], scales f32 [N, H/G])."""
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


def dispatch(x, topk_idx, num_experts, group_size):
    """x bf16 [T, H], topk_idx int [T, k] ->
    (q e4m3 [T*k, H], scales f32 [T*k, H/G], counts int64 [E], order int64 [T*k]).

    order[i] is the flat pair index (t * k + j) of the i-th row in expert-sorted
    order. Counts use scatter_add_ rather than torch.bincount: on CUDA bincount
    reads max() back to the host to size its output, which cannot be captured.
    """
    k = topk_idx.shape[1]
    flat = topk_idx.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    src_token = torch.div(order, k, rounding_mode="floor")
    rows = x.index_select(0, src_token)
    q, scales = quantize_fp8(rows, group_size)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=x.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    return q, scales, counts, order


def combine(expert_out, order, weights):
    """expert_out bf16 [T*k, H] (expert-sorted), order int64 [T*k], weights f32 [T, k]
    -> y bf16 [T, H]."""
    t, k = weights.shape
    h = expert_out.shape[1]
    pair_out = torch.empty_like(expert_out).index_copy_(0, order, expert_out)
    y = (pair_out.view(t, k, h).float() * weights.unsqueeze(-1)).sum(dim=1)
    return y.to(torch.bfloat16)


def make_step(num_experts, group_size):
    """The whole dispatch + combine as one function of four tensors; the same
    function is run eager, captured in a CUDA graph and given to torch.compile.
    Every dispatch output is returned so that nothing can be optimised away."""

    def step(x, topk_idx, weights, expert_out):
        q, scales, counts, order = dispatch(x, topk_idx, num_experts, group_size)
        y = combine(expert_out, order, weights)
        return q, scales, counts, y

    return step


# ----------------------------------------------------------------------------
# Inputs, checks, timing
# ----------------------------------------------------------------------------

def make_inputs(tokens, hidden, topk, experts, seed, device):
    """x bf16 [T, H] ~ N(0, 1); topk_idx int64 [T, k], k distinct experts per token
    drawn uniformly from E; weights f32 [T, k], positive, summing to 1 per token."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen, dtype=torch.float32)
    topk_idx = torch.rand(tokens, experts, generator=gen).topk(topk, dim=1).indices
    w = torch.rand(tokens, topk, generator=gen, dtype=torch.float32) + 0.05
    w = w / w.sum(dim=1, keepdim=True)
    return (x.to(torch.bfloat16).to(device), topk_idx.to(torch.int64).to(device),
            w.to(device))


def reference_y(x, weights, group_size):
    """What y must be: every pair's expert output is dequant(quant(x[t])), so
    y[t] = dequant(quant(x[t])) * sum_j w[t, j] (up to f32 summation order)."""
    q, s = quantize_fp8(x, group_size)
    return (dequantize_fp8(q, s, group_size).float()
            * weights.sum(dim=1, keepdim=True)).to(torch.bfloat16)


def check_outputs(counts, y, counts_ref, y_ref):
    """Returns None when the outputs are right, else a message."""
    if not torch.equal(counts.cpu(), counts_ref.cpu()):
        return "per-expert counts differ from torch.bincount"
    err = (y.float() - y_ref.float()).abs().max().item()
    scale = max(y_ref.float().abs().max().item(), 1e-6)
    if not math.isfinite(err) or err / scale > 2e-2:
        return "y differs from reference: max abs err %.4g (max |y_ref| %.4g)" % (err, scale)
    return None


def percentile(sorted_vals, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(vals, prefix=""):
    s = sorted(vals)
    return {
        prefix + "median_us": round(percentile(s, 0.5), 3),
        prefix + "p10_us": round(percentile(s, 0.1), 3),
        prefix + "p90_us": round(percentile(s, 0.9), 3),
    }


def time_iterations(body, num_phases, iters, warmup):
    """Runs body(events) warmup + iters times with a device synchronize after each.
    body records events[0] before the work and events[p + 1] after phase p (body
    gets None during warm-up). Returns (total_us list, [phase_us list per phase])."""
    for _ in range(warmup):
        body(None)
        torch.cuda.synchronize()
    total = []
    phases = [[] for _ in range(num_phases)]
    for _ in range(iters):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(num_phases + 1)]
        body(events)
        torch.cuda.synchronize()
        total.append(events[0].elapsed_time(events[-1]) * 1000.0)
        for p in range(num_phases):
            phases[p].append(events[p].elapsed_time(events[p + 1]) * 1000.0)
    return total, phases


def run_eager(args, inputs, expert_out, refs):
    x, topk_idx, weights = inputs
    E, G = args.experts, args.group_size
    q, scales, counts, order = dispatch(x, topk_idx, E, G)
    y = combine(expert_out, order, weights)
    torch.cuda.synchronize()
    flat = topk_idx.reshape(-1).cpu()
    if not torch.equal(order.cpu(), torch.argsort(flat, stable=True)):
        raise RuntimeError("check failed: argsort on the GPU is not the stable order")
    msg = check_outputs(counts, y, *refs)
    if msg:
        raise RuntimeError("check failed: " + msg)

    def body(ev):
        if ev:
            ev[0].record()
        _q, _s, _c, o = dispatch(x, topk_idx, E, G)
        if ev:
            ev[1].record()
        combine(expert_out, o, weights)
        if ev:
            ev[2].record()

    total, (disp, comb) = time_iterations(body, 2, args.iters, args.warmup)
    res = summarize(total)
    res.update(summarize(disp, "dispatch_"))
    res.update(summarize(comb, "combine_"))
    return res


def run_graph(args, inputs, expert_out, refs):
    # The input tensors are allocated once and never reallocated, so they are
    # the graph's static input buffers (a caller would copy_() new data in).
    x, topk_idx, weights = inputs
    step = make_step(args.experts, args.group_size)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up before capture, as the docs require
        for _ in range(3):
            step(x, topk_idx, weights, expert_out)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(x, topk_idx, weights, expert_out)
    graph.replay()
    torch.cuda.synchronize()
    msg = check_outputs(static_out[2], static_out[3], *refs)
    if msg:
        raise RuntimeError("check failed: " + msg)

    def body(ev):
        if ev:
            ev[0].record()
        graph.replay()
        if ev:
            ev[1].record()

    total, _ = time_iterations(body, 1, args.iters, args.warmup)
    res = summarize(total)
    del graph, static_out
    return res


def run_compile(args, inputs, expert_out, refs):
    x, topk_idx, weights = inputs
    try:
        torch._dynamo.reset()  # fresh compile per token count, no recompile limit
    except Exception:
        pass
    compiled = torch.compile(make_step(args.experts, args.group_size),
                             mode=args.compile_mode, dynamic=False)
    out = compiled(x, topk_idx, weights, expert_out)  # compiles here
    torch.cuda.synchronize()
    msg = check_outputs(out[2], out[3], *refs)
    if msg:
        raise RuntimeError("check failed: " + msg)

    def body(ev):
        if ev:
            ev[0].record()
        compiled(x, topk_idx, weights, expert_out)
        if ev:
            ev[1].record()

    total, _ = time_iterations(body, 1, args.iters, args.warmup)
    return summarize(total)


RUNNERS = {"eager": run_eager, "graph": run_graph, "compile": run_compile}


def error_text(exc):
    text = "%s: %s" % (type(exc).__name__, exc)
    text = " ".join(text.split())
    return "error: " + (text[:400] + "..." if len(text) > 400 else text)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="1,32,128,512,4096",
                   help="comma-separated token counts T (default 1,32,128,512,4096)")
    p.add_argument("--hidden", type=int, default=7168, help="H, bf16 values per row")
    p.add_argument("--topk", type=int, default=8, help="k, experts per token")
    p.add_argument("--experts", type=int, default=256, help="E, number of experts")
    p.add_argument("--group-size", type=int, default=128, help="G, FP8 group size")
    p.add_argument("--iters", type=int, default=200, help="timed iterations")
    p.add_argument("--warmup", type=int, default=20, help="untimed warm-up iterations")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of eager,graph,compile")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed for inputs and routing")
    args = p.parse_args(argv)
    args.tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error("unknown variant(s): %s" % ",".join(bad))
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
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if torch is None:
        print(json.dumps({"error": "torch is not importable: %s" % _TORCH_IMPORT_ERROR}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is not available to torch %s" % torch.__version__}))
        return 0
    if not hasattr(torch, "float8_e4m3fn"):
        print(json.dumps({"error": "torch %s has no float8_e4m3fn" % torch.__version__}))
        return 0

    device = torch.device("cuda", torch.cuda.current_device())
    results = []
    print("torch_w1: %s, torch %s, H=%d k=%d E=%d G=%d, %d iters (+%d warm-up)"
          % (torch.cuda.get_device_name(), torch.__version__, args.hidden, args.topk,
             args.experts, args.group_size, args.iters, args.warmup), file=sys.stderr)
    header = "%7s  %-8s %10s %10s %10s %12s %12s" % (
        "tokens", "variant", "median_us", "p10_us", "p90_us", "dispatch_us", "combine_us")
    print(header, file=sys.stderr)
    for t in args.tokens:
        x, topk_idx, weights = make_inputs(t, args.hidden, args.topk, args.experts,
                                           args.seed, device)
        # Expert stand-in (untimed): the dequantised dispatched rows, as bf16.
        q, scales, _counts, _order = dispatch(x, topk_idx, args.experts, args.group_size)
        expert_out = dequantize_fp8(q, scales, args.group_size)
        del q, scales, _counts, _order
        refs = (torch.bincount(topk_idx.reshape(-1), minlength=args.experts),
                reference_y(x, weights, args.group_size))
        for variant in args.variants:
            entry = {"tokens": t, "variant": variant}
            try:
                entry.update(RUNNERS[variant](args, (x, topk_idx, weights), expert_out, refs))
                entry["check"] = "ok"
            except Exception as exc:
                entry.update({"median_us": None, "p10_us": None, "p90_us": None,
                              "error": error_text(exc)})
                try:
                    torch.cuda.synchronize()
                except Exception:
                    pass
            results.append(entry)
            if "error" in entry:
                print("%7d  %-8s %s" % (t, variant, entry["error"]), file=sys.stderr)
            else:
                print("%7d  %-8s %10.1f %10.1f %10.1f %12s %12s" % (
                    t, variant, entry["median_us"], entry["p10_us"], entry["p90_us"],
                    "%.1f" % entry["dispatch_median_us"] if "dispatch_median_us" in entry else "-",
                    "%.1f" % entry["combine_median_us"] if "combine_median_us" in entry else "-"),
                    file=sys.stderr)
        del x, topk_idx, weights, expert_out, refs
        torch.cuda.empty_cache()

    print(json.dumps({
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "config": {"hidden": args.hidden, "topk": args.topk, "experts": args.experts,
                   "group_size": args.group_size, "iters": args.iters,
                   "warmup": args.warmup, "compile_mode": args.compile_mode,
                   "seed": args.seed},
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
