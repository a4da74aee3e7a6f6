/**
 * Runs an async action on behalf of many callers at once: callers that arrive while a run is in
 * progress share the next run. Used to group fsyncs: a hundred writers that each need "the map is
 * durable" cause two fdatasync calls, not a hundred.
 */
export class Coalesced {
  private current: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(private readonly action: () => Promise<void>) {}

  run(): Promise<void> {
    if (!this.current) {
      this.current = this.action().finally(() => (this.current = null));
      return this.current;
    }
    if (!this.next) {
      const after = this.current.catch(() => undefined);
      this.next = after.then(() => {
        this.next = null;
        return this.run();
      });
    }
    return this.next;
  }
}
