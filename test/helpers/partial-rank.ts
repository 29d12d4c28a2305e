// One rank of test/verify-partial.test.ts: every rank reports one case as finished; rank 1 then dies before
// its result, as a rank stopped by a timeout does.
import { rankMain, reportPartial } from '../../src/cli/rank-io.js';

const rank = Number(process.env.RANK ?? 0);
reportPartial([{ name: 'first', rank }]);
if (rank === 1) process.exit(3);
await rankMain(async () => [
  { name: 'first', rank },
  { name: 'second', rank },
]);
