import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, LaunchError, PeerTimeoutError } from '../src/errors.js';
import { readRankEnv, storeFromEnv } from '../src/launch/env.js';
import { launchProcesses } from '../src/launch/processes.js';
import { connectStore, type StoreClient, startStoreServer } from '../src/launch/store.js';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'moe-a2a-launch-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function rejectsWith(
  p: Promise<unknown>,
  check: (err: Error & { code?: string }) => void,
): Promise<void> {
  try {
    await p;
  } catch (err) {
    check(err as Error & { code?: string });
    return;
  }
  assert.fail('expected a rejection');
}

describe('store', () => {
  test('set/get round-trips binary values, strings and empty values', async () => {
    const server = await startStoreServer({ port: 0 });
    const a = await connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000 });
    const b = await connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000 });
    const handle = new Uint8Array(64);
    for (let i = 0; i < 64; i++) handle[i] = (i * 37 + 200) & 0xff;
    handle[3] = 0;
    handle[10] = 0x0a;
    await a.set('ipc/0', handle);
    assert.deepEqual(await b.get('ipc/0'), handle);
    // A view into a larger buffer stores only its bytes.
    const big = new Uint8Array([9, 9, 1, 2, 3, 9]);
    await a.set('view', big.subarray(2, 5));
    assert.deepEqual(await b.get('view'), new Uint8Array([1, 2, 3]));
    await a.set('text', 'héllo/ünïcode');
    assert.equal(await b.getString('text'), 'héllo/ünïcode');
    await a.set('empty', new Uint8Array(0));
    assert.equal((await b.get('empty')).length, 0);
    assert.deepEqual(await b.check(['ipc/0', 'nope', 'empty']), [true, false, true]);
    assert.equal(await b.delete('text'), true);
    assert.equal(await b.delete('text'), false);
    const large = new Uint8Array(3 * 1024 * 1024).map((_, i) => i * 7);
    await a.set('large', large);
    assert.deepEqual(await b.get('large'), large);
    await a.close();
    await b.close();
    await server.close();
  });

  test('get waits for a later set', async () => {
    const server = await startStoreServer({ port: 0 });
    const a = await connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000 });
    const b = await connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000 });
    const t0 = Date.now();
    const waiting = b.get('late');
    const waiting2 = b.getString('late');
    setTimeout(() => void a.set('late', 'here'), 150);
    assert.equal(Buffer.from(await waiting).toString(), 'here');
    assert.equal(await waiting2, 'here');
    assert.ok(Date.now() - t0 >= 100);
    await a.close();
    await b.close();
    await server.close();
  });

  test('get timeout names the key and the timeout; the client stays usable', async () => {
    const server = await startStoreServer({ port: 0 });
    const c = await connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000 });
    const t0 = Date.now();
    await rejectsWith(c.get('never/set', { timeoutMs: 150 }), (err) => {
      assert.ok(err instanceof PeerTimeoutError);
      assert.equal(err.code, ErrorCodes.peerTimeout);
      assert.match(err.message, /never\/set/);
      assert.match(err.message, /150 ms/);
      assert.equal((err as PeerTimeoutError).details.key, 'never/set');
    });
    assert.ok(Date.now() - t0 < 1500);
    await c.set('never/set', 'now');
    assert.equal(await c.getString('never/set', { timeoutMs: 100 }), 'now');
    await c.close();
    await server.close();
  });

  test('add is atomic under concurrent clients', async () => {
    const server = await startStoreServer({ port: 0 });
    const clients = await Promise.all(
      Array.from({ length: 6 }, () =>
        connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000 }),
      ),
    );
    const perClient = 50;
    const results = await Promise.all(
      clients.map((c) => Promise.all(Array.from({ length: perClient }, () => c.add('counter', 1)))),
    );
    const all = results.flat().sort((x, y) => x - y);
    assert.deepEqual(
      all,
      Array.from({ length: 6 * perClient }, (_, i) => i + 1),
    );
    assert.equal(await clients[0]!.getString('counter'), String(6 * perClient));
    assert.equal(await clients[1]!.add('counter', -300), 0);
    await clients[0]!.set('not-a-number', 'abc');
    await rejectsWith(clients[0]!.add('not-a-number', 1), (err) => assert.ok(err instanceof LaunchError));
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
  });

  test('barrier completes for every rank, and can be reused by name', async () => {
    const server = await startStoreServer({ port: 0 });
    const world = 4;
    const clients = await Promise.all(
      Array.from({ length: world }, (_, rank) =>
        connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000, rank }),
      ),
    );
    for (let round = 0; round < 3; round++) {
      await Promise.all(
        clients.map(async (c, rank) => {
          await new Promise((r) => setTimeout(r, rank * 20));
          await c.barrier('step', world);
        }),
      );
    }
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
  });

  test('barrier timeout names the ranks that did not arrive', async () => {
    const server = await startStoreServer({ port: 0 });
    const world = 4;
    const clients: StoreClient[] = await Promise.all(
      [0, 2].map((rank) => connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 2000, rank })),
    );
    const errors = await Promise.all(
      clients.map((c) =>
        c.barrier('init', world, 200).then(
          () => null,
          (e) => e,
        ),
      ),
    );
    for (const err of errors) {
      assert.ok(err instanceof PeerTimeoutError, String(err));
      assert.match(err.message, /barrier "init"/);
      assert.match(err.message, /ranks 1, 3 of 4 did not arrive/);
      assert.equal(err.details.missing, '1,3');
      assert.equal(err.details.peer, 1);
    }
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
  });

  test('a client started before the server retries until it is up', async () => {
    const port = await freePort();
    const connecting = connectStore({ host: '127.0.0.1', port, timeoutMs: 3000 });
    await new Promise((r) => setTimeout(r, 300));
    const server = await startStoreServer({ port });
    const c = await connecting;
    await c.set('k', 'v');
    assert.equal(await c.getString('k'), 'v');
    await c.close();
    await server.close();
  });

  test('a server that never comes: LaunchError naming the address and timeout', async () => {
    const port = await freePort();
    await rejectsWith(connectStore({ host: '127.0.0.1', port, timeoutMs: 300 }), (err) => {
      assert.ok(err instanceof LaunchError);
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
      assert.match(err.message, /300 ms/);
    });
  });

  test('pending requests fail with LaunchError when the server goes away', async () => {
    const server = await startStoreServer({ port: 0 });
    const c = await connectStore({ host: '127.0.0.1', port: server.port, timeoutMs: 5000 });
    const waiting = c.get('forever').then(
      () => null,
      (err: unknown) => err,
    );
    await server.close();
    const err = await waiting;
    assert.ok(err instanceof LaunchError, String(err));
    assert.match(err.message, /connection to the rendezvous store at .* was lost/);
    await c.close();
  });
});

describe('env', () => {
  const base = { RANK: '1', WORLD_SIZE: '4', MASTER_ADDR: '127.0.0.1', MASTER_PORT: '29500' };

  test('reads torchrun variables', () => {
    assert.equal(readRankEnv({}), null);
    assert.deepEqual(readRankEnv({ ...base, LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '2' }), {
      rank: 1,
      world: 4,
      localRank: 1,
      localWorld: 2,
      masterAddr: '127.0.0.1',
      masterPort: 29500,
      storePort: 29500,
      storeOwner: 'rank0',
      torchAgentStore: false,
    });
    const env = readRankEnv({ ...base, MOE_A2A_STORE_OWNER: 'launcher', MOE_A2A_STORE_PORT: '30000' })!;
    assert.equal(env.localRank, 1);
    assert.equal(env.localWorld, 4);
    assert.equal(env.storeOwner, 'launcher');
    assert.equal(env.storePort, 30000);
  });

  test('malformed variables: LaunchError naming the variable', () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ ...base, RANK: '1.5' }, /RANK must be/],
      [{ ...base, RANK: 'abc' }, /RANK must be/],
      [{ ...base, RANK: '-1' }, /RANK must be/],
      [{ ...base, RANK: '4' }, /RANK 4 must be less than WORLD_SIZE 4/],
      [{ ...base, WORLD_SIZE: '0' }, /WORLD_SIZE must be/],
      [{ ...base, MASTER_PORT: '70000' }, /MASTER_PORT must be/],
      [{ RANK: '0', WORLD_SIZE: '2' }, /MASTER_ADDR, MASTER_PORT are not set/],
      [
        { ...base, LOCAL_RANK: '2', LOCAL_WORLD_SIZE: '2' },
        /LOCAL_RANK 2 must be less than LOCAL_WORLD_SIZE 2/,
      ],
    ];
    for (const [env, re] of cases) {
      assert.throws(
        () => readRankEnv(env),
        (err: unknown) => err instanceof LaunchError && re.test(err.message),
        JSON.stringify(env),
      );
    }
  });

  test('without the launcher rank 0 serves the store; others may connect first', async () => {
    const port = String(await freePort());
    const envOf = (rank: number) =>
      readRankEnv({ RANK: String(rank), WORLD_SIZE: '3', MASTER_ADDR: '127.0.0.1', MASTER_PORT: port })!;
    const early = [storeFromEnv(envOf(1), 3000), storeFromEnv(envOf(2), 3000)];
    await new Promise((r) => setTimeout(r, 200));
    const clients = [await storeFromEnv(envOf(0), 3000), ...(await Promise.all(early))];
    await Promise.all(clients.map((c, r) => c.set(`id/${r}`, `rank-${r}`)));
    await Promise.all(clients.map((c) => c.barrier('ready', 3)));
    assert.equal(await clients[2]!.getString('id/0'), 'rank-0');
    // Rank 0 closes first: its server waits for the others to close.
    const closing0 = clients[0]!.close();
    await clients[1]!.set('after', 'x');
    assert.equal(await clients[2]!.getString('after'), 'x');
    await Promise.all([clients[1]!.close(), clients[2]!.close()]);
    await closing0;
  });
});

describe('launchProcesses', () => {
  test('3 ranks see their variables and exchange values through the store', async () => {
    const script = path.join(tmp, 'exchange.mjs');
    const envModule = new URL('../src/launch/env.ts', import.meta.url).href;
    writeFileSync(
      script,
      `import { readRankEnv, storeFromEnv } from ${JSON.stringify(envModule)};
const e = process.env;
console.log('vars ' + JSON.stringify([e.RANK, e.WORLD_SIZE, e.LOCAL_RANK, e.LOCAL_WORLD_SIZE, e.MASTER_ADDR, e.MASTER_PORT]));
const env = readRankEnv();
const store = await storeFromEnv(env, 5000);
await store.set('val/' + env.rank, new Uint8Array([env.rank, 255, 0, 10]));
await store.barrier('exchanged', env.world);
const got = [];
for (let r = 0; r < env.world; r++) got.push(Array.from(await store.get('val/' + r)));
console.log('got ' + JSON.stringify(got));
console.error('to stderr');
await store.barrier('end', env.world);
await store.close();
`,
    );
    const lines: { line: string; rank: number; stream: string }[] = [];
    const result = await launchProcesses({
      nprocs: 3,
      command: [process.execPath, '--import', 'tsx', script],
      cwd: repoRoot,
      timeoutMs: 10000,
      onLine: (line, { rank, stream }) => lines.push({ line, rank, stream }),
    });
    assert.equal(result.ok, true, JSON.stringify({ result, lines }));
    assert.deepEqual(result.exitCodes, [0, 0, 0]);
    assert.equal(result.exitCode, 0);
    assert.equal(result.stop, null);
    for (const l of lines) assert.ok(l.line.startsWith(`[rank ${l.rank}] `), l.line);
    for (let r = 0; r < 3; r++) {
      const vars = lines.find((l) => l.rank === r && l.line.includes(' vars '));
      assert.ok(vars, `rank ${r} printed its variables`);
      assert.equal(
        vars.line,
        `[rank ${r}] vars ${JSON.stringify([String(r), '3', String(r), '3', '127.0.0.1', String(result.masterPort)])}`,
      );
      const got = lines.find((l) => l.rank === r && l.line.includes(' got '));
      assert.equal(got?.line, `[rank ${r}] got [[0,255,0,10],[1,255,0,10],[2,255,0,10]]`);
      const err = lines.find((l) => l.rank === r && l.stream === 'stderr');
      assert.equal(err?.line, `[rank ${r}] to stderr`);
    }
  });

  test('a failing rank stops the others and is reported first', async () => {
    const script = path.join(tmp, 'fail.mjs');
    writeFileSync(
      script,
      `if (process.env.RANK === '1') { console.log('failing'); setTimeout(() => process.exit(1), 100); }
else { console.log('sleeping'); setInterval(() => {}, 1e9); }
`,
    );
    const stops: string[] = [];
    const lines: string[] = [];
    const t0 = Date.now();
    const result = await launchProcesses({
      nprocs: 3,
      command: [process.execPath, script],
      graceMs: 200,
      killAfterMs: 1000,
      onLine: (line) => lines.push(line),
      onStop: (message) => stops.push(message),
    });
    const elapsed = Date.now() - t0;
    assert.ok(elapsed < 5000, `returned after ${elapsed} ms`);
    assert.equal(result.ok, false);
    assert.equal(result.firstFailure?.rank, 1);
    assert.equal(result.firstFailure?.code, 1);
    assert.deepEqual(result.stop, { kind: 'rank-failed', rank: 1, code: 1, signal: null });
    assert.equal(result.message, 'rank 1 exited with code 1; stopping the others');
    assert.deepEqual(stops, ['rank 1 exited with code 1; stopping the others']);
    assert.equal(result.exitCode, 1);
    for (const r of [0, 2]) {
      assert.equal(result.exits[r]!.signal, 'SIGTERM');
      assert.equal(result.exits[r]!.stoppedByLauncher, true);
    }
    assert.ok(lines.includes('[rank 1] failing'));
    assert.ok(lines.includes('[rank 0] sleeping'));
  });

  test('the overall timeout stops everyone and names the ranks still running', async () => {
    const script = path.join(tmp, 'slow.mjs');
    writeFileSync(script, `if (process.env.RANK !== '0') setInterval(() => {}, 1e9);\n`);
    const t0 = Date.now();
    const result = await launchProcesses({
      nprocs: 3,
      command: [process.execPath, script],
      timeoutMs: 700,
      killAfterMs: 1000,
      onLine: () => {},
    });
    assert.ok(Date.now() - t0 < 4000);
    assert.equal(result.exitCodes[0], 0);
    assert.deepEqual(result.stop, { kind: 'timeout', timeoutMs: 700, running: [1, 2] });
    assert.equal(result.message, 'timed out after 700 ms with ranks 1, 2 still running; stopping them');
    assert.equal(result.exitCode, 124);
    assert.equal(result.firstFailure, null);
  });

  test('a program that cannot start is reported', async () => {
    const result = await launchProcesses({
      nprocs: 2,
      command: [path.join(tmp, 'no-such-program')],
      graceMs: 100,
      onLine: () => {},
    });
    assert.equal(result.ok, false);
    assert.equal(result.stop?.kind, 'rank-failed');
    assert.match(result.message ?? '', /could not start .*ENOENT/);
  });

  test('two hosts (two launchers on loopback): global ranks, one store on host 0, every rank sees all', async () => {
    const script = path.join(tmp, 'hosts.mjs');
    const envModule = new URL('../src/launch/env.ts', import.meta.url).href;
    writeFileSync(
      script,
      `import { readRankEnv, storeFromEnv } from ${JSON.stringify(envModule)};
const e = process.env;
console.log('vars ' + JSON.stringify([e.RANK, e.WORLD_SIZE, e.LOCAL_RANK, e.LOCAL_WORLD_SIZE, e.GROUP_RANK]));
const env = readRankEnv();
const store = await storeFromEnv(env, 5000);
await store.set('host/' + env.rank, e.GROUP_RANK);
await store.barrier('seen', env.world);
const hosts = [];
for (let r = 0; r < env.world; r++) hosts.push(await store.getString('host/' + r));
console.log('hosts ' + hosts.join(''));
await store.barrier('end', env.world);
await store.close();
`,
    );
    const masterPort = await freePort();
    const lines: { line: string; rank: number }[] = [];
    const host = (nodeRank: number) =>
      launchProcesses({
        nprocs: 2,
        nnodes: 2,
        nodeRank,
        masterAddr: '127.0.0.1',
        masterPort,
        command: [process.execPath, '--import', 'tsx', script],
        cwd: repoRoot,
        timeoutMs: 15000,
        forwardSignals: false,
        onLine: (line, { rank }) => lines.push({ line, rank }),
      });
    // host 1 first: its ranks wait for host 0's store to come up
    const one = host(1);
    const zero = host(0);
    const [r0, r1] = await Promise.all([zero, one]);
    assert.equal(r0.ok && r1.ok, true, JSON.stringify({ r0, r1, lines }));
    assert.deepEqual(
      r1.exits.map((x) => x.rank),
      [2, 3],
    );
    for (let r = 0; r < 4; r++) {
      const node = r >> 1;
      const vars = lines.find((l) => l.rank === r && l.line.includes(' vars '));
      assert.equal(
        vars?.line,
        `[rank ${r}] vars ${JSON.stringify([String(r), '4', String(r & 1), '2', String(node)])}`,
      );
      const hosts = lines.find((l) => l.rank === r && l.line.includes(' hosts '));
      assert.equal(hosts?.line, `[rank ${r}] hosts 0011`);
    }
  });

  test('bad options reject with LaunchError', async () => {
    await rejectsWith(launchProcesses({ nprocs: 0, command: ['x'] }), (err) =>
      assert.equal(err.code, ErrorCodes.launch),
    );
    await rejectsWith(launchProcesses({ nprocs: 1, command: [] }), (err) =>
      assert.equal(err.code, ErrorCodes.launch),
    );
    // several hosts: a node rank inside the job, and the same named store port on every host
    await rejectsWith(
      launchProcesses({ nprocs: 1, nnodes: 2, nodeRank: 2, masterPort: 1234, command: ['x'] }),
      (err) => assert.match(err.message, /nodeRank must be an integer in \[0, 1\]/),
    );
    await rejectsWith(launchProcesses({ nprocs: 1, nnodes: 2, nodeRank: 1, command: ['x'] }), (err) =>
      assert.match(err.message, /every launcher must name the same store port/),
    );
  });
});
