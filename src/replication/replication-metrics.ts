import type { Counter, Gauge, MetricsRegistry } from '../lib/metrics.ts';

/** Source-side replication metrics, labelled by destination region. */
export class ReplicationMetrics {
  readonly bytesSent: Counter;
  readonly chunksSent: Counter;
  readonly chunksSkipped: Counter;
  readonly chunksResent: Counter;
  readonly activeCopies: Gauge;
  readonly queuedCopies: Gauge;

  constructor(registry: MetricsRegistry) {
    this.bytesSent = registry.counter('snapferry_replication_bytes_sent_total', 'Chunk bytes put on the wire to destination regions (after compression).');
    this.chunksSent = registry.counter('snapferry_replication_chunks_sent_total', 'Chunks sent to destination regions.');
    this.chunksSkipped = registry.counter('snapferry_replication_chunks_skipped_total', 'Chunks not sent because the destination already held them.');
    this.chunksResent = registry.counter('snapferry_replication_chunks_resent_total', 'Chunks sent again because the destination found them damaged in transit.');
    this.activeCopies = registry.gauge('snapferry_replication_active_copies', 'Copies being sent now, per destination.');
    this.queuedCopies = registry.gauge('snapferry_replication_queued_copies', 'Copies waiting for a slot, per destination.');
  }
}
