/**
 * A small TCP key/value rendezvous store, in the manner of torch's TCPStore: ranks exchange small
 * binary values (CUDA IPC handles, NCCL unique ids, counts) and meet at barriers before the data path
 * starts. It is a control-plane tool, never on the hot path.
 *
 * Who serves it: `moe-a2a launch` (see processes.ts) runs the server inside the launcher process and
 * tells its ranks so through `MOE_A2A_STORE_OWNER=launcher`; a rank started some other way (by hand, by
 * a scheduler) finds no such variable and rank 0 serves it at MASTER_ADDR:MASTER_PORT (see env.ts).
 *
 * The code is split by concern: store-frames.ts (the wire format, shared by both sides),
 * store-server.ts (startStoreServer) and store-client.ts (connectStore). This module keeps the public
 * API in one place so importers need not know the split.
 */
export { connectStore, type StoreClient, type StoreClientOptions } from './store-client.js';
export { type StoreServer, type StoreServerOptions, startStoreServer } from './store-server.js';
