import type pg from 'pg';
import type { NodeRecord, NodeRepository } from '../metadata-store.ts';

interface Row { id: string; roles: string; url: string; nbd_address: string | null; started_at: number; heartbeat_at: number }

const toNode = (r: Row): NodeRecord => ({
  id: r.id, roles: JSON.parse(r.roles), url: r.url, nbdAddress: r.nbd_address, startedAt: r.started_at, heartbeatAt: r.heartbeat_at,
});

/** The processes of a region, each heartbeating its own row (COORD-4). One statement per method. */
export class PostgresNodeRepository implements NodeRepository {
  constructor(private readonly db: pg.Pool) {}

  async heartbeat(node: Omit<NodeRecord, 'heartbeatAt'>, now: number): Promise<void> {
    await this.db.query(
      `INSERT INTO nodes (id, roles, url, nbd_address, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (id) DO UPDATE SET roles = EXCLUDED.roles, url = EXCLUDED.url, nbd_address = EXCLUDED.nbd_address,
         started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at`,
      [node.id, JSON.stringify(node.roles), node.url, node.nbdAddress, node.startedAt, now],
    );
  }

  async get(id: string): Promise<NodeRecord | null> {
    const { rows } = await this.db.query('SELECT * FROM nodes WHERE id = $1', [id]);
    return rows[0] ? toNode(rows[0]) : null;
  }

  async listLive(now: number, maxAgeMs: number): Promise<NodeRecord[]> {
    const { rows } = await this.db.query('SELECT * FROM nodes WHERE heartbeat_at >= $1 ORDER BY id', [now - maxAgeMs]);
    return rows.map(toNode);
  }

  async remove(id: string): Promise<void> {
    await this.db.query('DELETE FROM nodes WHERE id = $1', [id]);
  }
}
