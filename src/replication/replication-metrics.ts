import type { Counter, Gauge, MetricsRegistry } from '../lib/metrics.ts';
import type { JobRepository } from '../metadata/metadata-store.ts';
import { COPY_JOB, type CopyPayload } from './copy-payload.ts';

/** Source-side replication metrics, labelled by destination region. */
export class ReplicationMetrics {
  readonly bytesSent: Counter;
  readonly chunksSent: Counter;
  readonly chunksSkipped: Counter;
  readonly chunksResent: Counter;
  readonly activeCopies: Gauge;
  readonly queuedCopies: Gauge;

  constructor(registry: MetricsRegistry, jobs: JobRepository, destinations: string[]) {
    this.bytesSent = registry.counter('snapferry_replication_bytes_sent_total', 'Chunk and manifest bytes put on the wire to destination regions (after compression).');
    this.chunksSent = registry.counter('snapferry_replication_chunks_sent_total', 'Chunks sent to destination regions.');
    this.chunksSkipped = registry.counter('snapferry_replication_chunks_skipped_total', 'Chunks not sent because the destination already held them.');
    this.chunksResent = registry.counter('snapferry_replication_chunks_resent_total', 'Chunks sent again because the destination found them damaged in transit.');
    this.activeCopies = registry.gauge('snapferry_replication_active_copies', 'Copies being sent now, per destination.');
    this.queuedCopies = registry.gauge('snapferry_replication_queued_copies', 'Copies waiting for a slot, per destination.');
    // The gauges are read from the job queue at scrape time: it is the truth, and nothing can drift.
    registry.onCollect(async () => {
      for (const [state, gauge] of [['running', this.activeCopies], ['queued', this.queuedCopies]] as const) {
        const counts = new Map<string, number>(destinations.map((d) => [d, 0]));
        for (const job of await jobs.list([state], [COPY_JOB])) {
          const dest = (job.payload as CopyPayload).destRegion;
          counts.set(dest, (counts.get(dest) ?? 0) + 1);
        }
        for (const [dest, n] of counts) gauge.set(n, { destination: dest });
      }
    });
  }
}
