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

/** Several percentages at once (one per destination of a copy): one redrawn line on a terminal, plain lines otherwise. */
export class MultiProgress {
  private readonly percents = new Map<string, number>();
  private readonly lastLine = new Map<string, number>();
  private readonly tty: boolean;

  constructor(
    labels: string[],
    private readonly quiet: boolean,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    for (const l of labels) this.percents.set(l, 0);
    this.tty = stream.isTTY === true;
  }

  update(label: string, percent: number, note = ''): void {
    if (this.quiet) return;
    const changed = this.percents.get(label) !== percent;
    this.percents.set(label, percent);
    if (this.tty) {
      const parts = [...this.percents].map(([l, p]) => `${l} [${'#'.repeat(Math.round(p / 5)).padEnd(20, '.')}] ${String(p).padStart(3)}%`);
      this.stream.write(`\r${parts.join('  ')}${note ? `  ${note}` : ''}`);
      return;
    }
    const now = Date.now();
    if (changed && (percent === 100 || now - (this.lastLine.get(label) ?? 0) >= 1000)) {
      this.lastLine.set(label, now);
      this.stream.write(`${label}: ${percent}%${note ? ` ${note}` : ''}\n`);
    }
  }

  done(): void {
    if (this.tty && !this.quiet) this.stream.write('\n');
  }
}
