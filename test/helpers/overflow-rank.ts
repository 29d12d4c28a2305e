// One rank of test/expert-layout.test.ts: a packed group whose first expert goes over maxRowsPerExpert
// while the rows of the experts after it would start past the end of expertX if the first one's rows
// counted; every rank must get CapacityError (or its peer's failure), twice in a row, and nothing else.
import { rankMain } from '../../src/cli/rank-io.js';
import { createGroup } from '../../src/create.js';
import { hostTensor } from '../../src/ep/tensor.js';

export interface OverflowTask {
  dispatchPath: 'direct' | 'staged';
}

await rankMain<OverflowTask, string[]>(async (task) => {
  const T = 8;
  const H = 64;
  const k = 2;
  const g = await createGroup({
    transport: 'cpu',
    world: 2,
    numExperts: 4,
    hidden: H,
    topk: k,
    maxTokensPerRank: T,
    maxRowsPerExpert: 4,
    dispatchPath: task.dispatchPath,
    dedup: false,
    fp8: false,
    expertLayout: 'packed',
    timeoutMs: 5000,
  });
  // every token picks expert 0 (16 rows from the two ranks, over 4); token 0 also expert 1, the rest 2 or 3
  const idx = new Int32Array(T * k);
  for (let t = 0; t < T; t++) {
    idx[t * k] = 0;
    idx[t * k + 1] = t === 0 ? 1 : 2 + (t % 2);
  }
  const out: string[] = [];
  for (let call = 0; call < 2; call++) {
    try {
      g.dispatch(hostTensor('bf16', [T, H]), hostTensor('i32', [T, k], idx), {
        topkWeights: hostTensor('f32', [T, k]),
      });
      out.push('ok');
    } catch (err) {
      out.push(`${(err as Error).name}: ${(err as Error).message}`);
    }
  }
  await g.close();
  return out;
});
