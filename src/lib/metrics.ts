/**
 * A tiny Prometheus registry: counters and gauges with labels, rendered in the text exposition
 * format. Enough for `GET /metrics`; no dependency for ~80 lines.
 */
type Labels = Record<string, string>;

abstract class Metric {
  protected readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge',
  ) {}

  protected slot(labels: Labels): { labels: Labels; value: number } {
    const key = JSON.stringify(Object.entries(labels).sort());
    let s = this.values.get(key);
    if (!s) {
      s = { labels, value: 0 };
      this.values.set(key, s);
    }
    return s;
  }

  get(labels: Labels = {}): number {
    return this.slot(labels).value;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`];
    if (this.values.size === 0) lines.push(`${this.name} 0`);
    for (const { labels, value } of this.values.values()) {
      const l = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`))}"`);
      lines.push(`${this.name}${l.length ? `{${l.join(',')}}` : ''} ${value}`);
    }
    return lines.join('\n');
  }
}

export class Counter extends Metric {
  constructor(name: string, help: string) {
    super(name, help, 'counter');
  }
  inc(by = 1, labels: Labels = {}): void {
    this.slot(labels).value += by;
  }
}

export class Gauge extends Metric {
  constructor(name: string, help: string) {
    super(name, help, 'gauge');
  }
  set(value: number, labels: Labels = {}): void {
    this.slot(labels).value = value;
  }
}

export class MetricsRegistry {
  private readonly metrics: Metric[] = [];
  private readonly collectors: Array<() => Promise<void>> = [];

  /** Runs before each render: for gauges read from a store rather than kept up to date. */
  onCollect(fn: () => Promise<void>): void {
    this.collectors.push(fn);
  }

  counter(name: string, help: string): Counter {
    const c = new Counter(name, help);
    this.metrics.push(c);
    return c;
  }

  gauge(name: string, help: string): Gauge {
    const g = new Gauge(name, help);
    this.metrics.push(g);
    return g;
  }

  async render(): Promise<string> {
    for (const collect of this.collectors) await collect();
    return this.metrics.map((m) => m.render()).join('\n') + '\n';
  }
}
