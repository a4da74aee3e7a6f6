/**
 * Progress display: a redrawn bar on a terminal, plain lines (at most one per second, plus the
 * last) when stderr is a pipe or file, nothing with --json.
 */
export class Progress {
  private lastLine = 0;
  private readonly tty: boolean;

  constructor(
    private readonly label: string,
    private readonly quiet: boolean,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = stream.isTTY === true;
  }

  update(done: number, total: number, unit: 'bytes' | 'percent' = 'bytes'): void {
    if (this.quiet) return;
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const percent = Math.floor(fraction * 100);
    const detail = unit === 'bytes' ? ` ${formatBytes(done)} / ${formatBytes(total)}` : '';
    if (this.tty) {
      const width = 30;
      const filled = Math.round(fraction * width);
      this.stream.write(`\r${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(percent).padStart(3)}%${detail}`);
      if (fraction >= 1) this.stream.write('\n');
      return;
    }
    const now = Date.now();
    if (fraction >= 1 || now - this.lastLine >= 1000) {
      this.lastLine = now;
      this.stream.write(`${this.label}: ${percent}%${detail}\n`);
    }
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}
