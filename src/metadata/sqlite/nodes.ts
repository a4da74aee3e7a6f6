import type { NodeRecord, NodeRepository } from '../metadata-store.ts';
import type { Db } from './database.ts';

interface Row { id: string; roles: string; url: string; nbd_address: string | null; started_at: number; heartbeat_at: number }

const toNode = (r: Row): NodeRecord => ({
  id: r.id, roles: JSON.parse(r.roles), url: r.url, nbdAddress: r.nbd_address, startedAt: r.started_at, heartbeatAt: r.heartbeat_at,
});

/** The node registry (COORD-4). With SQLite a region has one process, so this mostly records that one. */
export class SqliteNodeRepository implements NodeRepository {
  constructor(private readonly db: Db) {}

  async heartbeat(node: Omit<NodeRecord, 'heartbeatAt'>, now: number): Promise<void> {
    this.db
      .prepare(
        `INSERT INTO nodes (id, roles, url, nbd_address, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET roles = excluded.roles, url = excluded.url, nbd_address = excluded.nbd_address,
           started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at`,
      )
      .run(node.id, JSON.stringify(node.roles), node.url, node.nbdAddress, node.startedAt, now);
  }

  async get(id: string): Promise<NodeRecord | null> {
    const r = this.db.prepare('SELECT * FROM nodes WHERE id = ?').get(id) as Row | undefined;
    return r ? toNode(r) : null;
  }

  async listLive(now: number, maxAgeMs: number): Promise<NodeRecord[]> {
    return (this.db.prepare('SELECT * FROM nodes WHERE heartbeat_at >= ? ORDER BY id').all(now - maxAgeMs) as Row[]).map(toNode);
  }

  async remove(id: string): Promise<void> {
    this.db.prepare('DELETE FROM nodes WHERE id = ?').run(id);
  }
}
