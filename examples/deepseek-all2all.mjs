// The DeepSeek-V3 inference all-to-all of the tutorial this project grew from: every rank holds
// 128 tokens of hidden size 7168, each routed to 8 of 256 experts; dispatch sends them (FP8) to the
// ranks owning those experts, a stand-in expert scales each row, and combine brings the results back
// and reduces them with the router weights.
//
//   moe-a2a launch -n 4 examples/deepseek-all2all.mjs          (or: node dist/cli/main.js launch ...)
//
// Every rank runs this file: worker threads on the cpu transport, processes (one per GPU) on cuda.
import { bf16ToF32, createGroup, f32ToBf16, fp8ToF32, hostTensor } from 'moe-a2a';

const rank = Number(process.env.RANK ?? 0);
const world = Number(process.env.WORLD_SIZE ?? 1);
const T = 128;
const H = 7168;
const E = 256;
const k = 8;

// dedup: each token crosses to each rank once and comes back as one pre-reduced partial (the fastest
// choice from 32 tokens per rank on; the router weights then go to dispatch, not to combine)
const group = await createGroup({
  world,
  numExperts: E,
  hidden: H,
  topk: k,
  maxTokensPerRank: T,
  fp8: true,
  dedup: true,
});
// host tensors in and out: on cpu they pass through, on cuda they are copied to and from the GPU
const up = (t) => group.upload(t);
const down = (t) => group.download(t);

// this rank's tokens and a router's choice: 8 distinct experts per token with softmax-like weights
let seed = 12345 + rank;
const rand = () => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 2 ** 32;
};
const x = hostTensor(
  'bf16',
  [T, H],
  Uint16Array.from({ length: T * H }, () => f32ToBf16(rand() * 2 - 1)),
);
const idx = new Int32Array(T * k);
const weights = new Float32Array(T * k);
for (let t = 0; t < T; t++) {
  const chosen = new Set();
  while (chosen.size < k) chosen.add(Math.floor(rand() * E));
  [...chosen].forEach((e, j) => {
    idx[t * k + j] = e;
    weights[t * k + j] = 1 / k;
  });
}

const t0 = performance.now();
const res = group.dispatch(up(x), up(hostTensor('i32', [T, k], idx)), {
  topkWeights: up(hostTensor('f32', [T, k], weights)),
});
const expertX = down(res.expertX);
const scales = down(res.expertScales);
const counts = down(res.expertCounts).data;
const offsets = down(res.expertOffsets).data;

// stand-in experts: each local expert e returns its rows (expertX rows offsets[e] .. + counts[e])
// dequantised and scaled by (e + 1) / 8, in the same rows of expertOut
const epr = counts.length;
const G = H / scales.shape.at(-1);
const out = hostTensor('bf16', [...expertX.shape.slice(0, -1), H]);
for (let e = 0; e < epr; e++) {
  for (let i = 0; i < counts[e]; i++) {
    const r = offsets[e] + i;
    for (let h = 0; h < H; h++) {
      const v = fp8ToF32(expertX.data[r * H + h]) * scales.data[r * (H / G) + Math.floor(h / G)];
      out.data[r * H + h] = f32ToBf16((v * (e + 1)) / 8);
    }
  }
}
const y = down(group.combine(up(out), res.handle));
const ms = performance.now() - t0;

const received = counts.reduce((a, b) => a + b, 0);
console.log(
  `rank ${rank}/${world} (${group.transport}): received ${received} rows for ${epr} experts; y[0][0..3] =`,
  Array.from(y.data.subarray(0, 4), (b) => bf16ToF32(b).toFixed(4)).join(' '),
  `(${ms.toFixed(1)} ms)`,
);
await group.close();
