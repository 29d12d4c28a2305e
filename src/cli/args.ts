/** A small flag parser that also writes the help text, so every flag is documented where it is defined. */

export interface FlagSpec {
  name: string;
  kind: 'string' | 'int' | 'ints' | 'bool';
  help: string;
  /** Shown in help; the caller applies defaults. */
  default?: string;
  /** The value placeholder in help (e.g. N, MS). */
  meta?: string;
}

export type ParsedFlags = Record<string, string | number | number[] | boolean | undefined>;

export class UsageError extends Error {}

/**
 * Parses `--name value`, `--name=value`, `--flag` / `--no-flag`. With `stopAtPositional`, the first
 * argument that is not a flag ends parsing: it and everything after it go to `rest` untouched (for
 * `launch`, whose script takes its own flags).
 */
export function parseFlags(
  argv: readonly string[],
  specs: readonly FlagSpec[],
  stopAtPositional = false,
): { flags: ParsedFlags; rest: string[] } {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const flags: ParsedFlags = {};
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      rest.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('--')) {
      if (stopAtPositional) {
        rest.push(...argv.slice(i));
        break;
      }
      rest.push(a);
      continue;
    }
    let [name, value] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    let spec = byName.get(name);
    if (!spec && name.startsWith('no-') && byName.get(name.slice(3))?.kind === 'bool') {
      spec = byName.get(name.slice(3));
      name = name.slice(3);
      value = 'false';
    }
    if (!spec) throw new UsageError(`unknown flag --${name}`);
    if (spec.kind === 'bool') {
      flags[name] = value === undefined ? true : value !== 'false' && value !== '0';
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`--${name} needs a value`);
      value = argv[++i];
    }
    if (spec.kind === 'string') flags[name] = value;
    else if (spec.kind === 'int') flags[name] = toInt(name, value);
    else flags[name] = value.split(',').map((v) => toInt(name, v));
  }
  return { flags, rest };
}

function toInt(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new UsageError(`--${name} takes an integer, got '${v}'`);
  return n;
}

export function formatFlags(specs: readonly FlagSpec[]): string {
  const left = specs.map((s) => {
    const meta =
      s.kind === 'bool'
        ? ''
        : ` ${s.meta ?? (s.kind === 'ints' ? 'N[,N...]' : s.kind === 'int' ? 'N' : 'VALUE')}`;
    if (s.kind !== 'bool') return `  --${s.name}${meta}`;
    return s.name === 'help' ? '  --help' : `  --${s.name}, --no-${s.name}`;
  });
  const width = Math.max(...left.map((l) => l.length)) + 2;
  return specs
    .map(
      (s, i) =>
        `${left[i].padEnd(width)}${s.help}${s.default !== undefined ? ` (default: ${s.default})` : ''}`,
    )
    .join('\n');
}
