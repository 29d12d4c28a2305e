// One rank, no launcher: route 4 tokens to 8 experts and back. Run: node examples/quickstart.mjs
import { createGroup, f32ToBf16, hostTensor } from 'moe-a2a';

const T = 4; // tokens on this rank
const H = 256; // hidden size
const k = 2; // experts per token
const group = await createGroup({
  transport: 'cpu',
  world: 1,
  numExperts: 8,
  hidden: H,
  topk: k,
  maxTokensPerRank: T,
});

const x = hostTensor(
  'bf16',
  [T, H],
  Uint16Array.from({ length: T * H }, (_, i) => f32ToBf16(Math.sin(i))),
);
const topkIdx = hostTensor('i32', [T, k], Int32Array.from([0, 5, 1, 5, 7, -1, 2, 3])); // -1: dropped
const topkWeights = hostTensor('f32', [T, k], Float32Array.from([0.75, 0.25, 0.5, 0.5, 1, 0, 0.6, 0.4]));

const { expertX, expertScales, expertCounts, expertOffsets, handle } = group.dispatch(x, topkIdx, {
  topkWeights,
});
console.log('rows per local expert:', Array.from(expertCounts.data)); // [1, 1, 1, 1, 0, 2, 0, 1]
console.log('where they start:', Array.from(expertOffsets.data)); // [0, 1, 2, 3, 4, 4, 6, 6]
console.log('expertX', expertX.dtype, expertX.shape, 'scales', expertScales?.shape);

// Your experts go here: row r of expertOut is the output for row r of expertX (bf16); expert e's rows
// are rows expertOffsets[e] .. + expertCounts[e]. This one returns zeros; a real model runs a grouped
// GEMM with those offsets over expertX (dequantised with expertScales).
const expertOut = hostTensor('bf16', [...expertX.shape.slice(0, -1), H]); // (expertX's rows, H each: either layout)
const y = group.combine(expertOut, handle); // bf16 [T, H]: sum over j of weight[t][j] * out[t][j]
console.log('y', y.dtype, y.shape);
await group.close();
