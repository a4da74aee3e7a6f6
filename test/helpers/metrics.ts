/**
 * The /metrics token of every server a test starts (spawned servers get it as
 * SNAPFERRY_METRICS_TOKEN, in-process regions in their config).
 */
export const TEST_METRICS_TOKEN = 'snapferry-test-metrics-token-0123456789';

/** Reads one sample from a region's Prometheus endpoint (0 when absent). */
export async function metric(baseUrl: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const res = await fetch(`${baseUrl}/metrics`, { headers: { authorization: `Bearer ${TEST_METRICS_TOKEN}` } });
  if (res.status !== 200) throw new Error(`GET ${baseUrl}/metrics answered ${res.status}`);
  const text = await res.text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).sort().join(',');
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? '').split(',').filter((x) => x !== '').sort().join(',');
    if (have === want) return Number(m[3]);
  }
  return 0;
}
