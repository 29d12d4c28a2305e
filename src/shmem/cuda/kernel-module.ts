import type { CudaDriver, CuModule, KernelLauncher } from './driver.js';

/** The kernels a group launches (kernels/ep_route.cuh, ep_dispatch.cuh, ep_combine.cuh, ep_bench.cuh); a kernel's index here names it to the launch queue. */
export const KERNELS = [
  'ep_route',
  'ep_dispatch',
  'ep_dispatch_local',
  'ep_recv_view',
  'ep_combine_send',
  'ep_combine_reduce',
  'ep_stage_send',
  'ep_stage_pack',
  'ep_barrier',
  'ep_rail_plan',
  'ep_rail_rows',
  'ep_rail_forward',
  'ep_rail_combine',
  'ep_rail_land',
  'ep_combine_reduce_dedup',
  'ep_combine_reduce_flagged',
  'ep_stage_send_large',
  'ep_stage_pack_own',
] as const;
export type KernelName = (typeof KERNELS)[number];
export type KernelLaunchers = Record<KernelName, KernelLauncher>;

/** The kernel module, loaded once per driver and device: every group of the process shares it. */
const modules = new WeakMap<CudaDriver, Map<number, CuModule>>();

export function moduleFor(drv: CudaDriver, ordinal: number, image: () => Uint8Array): CuModule {
  let byDevice = modules.get(drv);
  if (!byDevice) {
    byDevice = new Map();
    modules.set(drv, byDevice);
  }
  let m = byDevice.get(ordinal);
  if (m === undefined) {
    m = drv.moduleLoadData(image());
    byDevice.set(ordinal, m);
  }
  return m;
}

/** A launcher for every kernel, each bound to the group's one argument buffer (`argBytes`, an EpArgs). */
export function prepareLaunchers(drv: CudaDriver, module: CuModule, argBytes: Uint8Array): KernelLaunchers {
  return Object.fromEntries(
    KERNELS.map((k) => [k, drv.prepareLaunch(drv.moduleGetFunction(module, k), argBytes)]),
  ) as KernelLaunchers;
}
