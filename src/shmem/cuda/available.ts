import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: the nearest folder above this module holding package.json (works from src/ and dist/). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return dir;
}

/** Where `npm run build` puts the kernels. MOE_A2A_FATBIN overrides it (set and not empty, as the bench records it). */
export function fatbinPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.MOE_A2A_FATBIN || join(packageRoot(), 'dist', 'kernels', 'ep.fatbin');
}

/** True when the cuda transport can run here: the built kernels, an NVIDIA driver and a GPU. */
export async function cudaTransportReady(): Promise<boolean> {
  if (!existsSync(fatbinPath())) return false;
  // imported lazily so that the cpu path never loads koffi or libcuda
  const { cudaAvailable } = await import('./driver.js');
  return cudaAvailable();
}
