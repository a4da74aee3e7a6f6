/**
 * One spawned single-region server (bj) for a test file, with the calls those files keep needing:
 * create a disk, read its bytes through the HTTP data API, read its status. `useOneRegion` registers
 * the file's before/after hooks, so the server is started once and always stopped.
 */
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { BceClient } from '../../src/lib/bce-client.ts';
import { sdkClient, send, waitVolume, type SdkClient } from './sdk.ts';
import { spawnServer, type SpawnedServer } from './spawned-server.ts';

export interface OneRegion {
  readonly server: SpawnedServer;
  readonly bj: SdkClient;
  /** A signed client for our data extension (close it after use). */
  http(): BceClient;
  newDisk(body?: Record<string, unknown>): Promise<string>;
  /** Bytes [offset, offset+length) of a disk, through the HTTP data API. */
  readData(id: string, offset: number, length: number): Promise<Buffer>;
  volumeStatus(id: string): Promise<string>;
}

export function useOneRegion(ak: string, sk: string): OneRegion {
  let server: SpawnedServer | undefined;
  let bj: SdkClient | undefined;
  before(async () => {
    server = await spawnServer({ regions: ['bj'], env: { SNAPFERRY_ACCESS_KEY_ID: ak, SNAPFERRY_SECRET_ACCESS_KEY: sk } });
    bj = sdkClient(server.urls.bj!, ak, sk);
  });
  after(async () => server?.dispose());
  const region: OneRegion = {
    get server() {
      return server!;
    },
    get bj() {
      return bj!;
    },
    http: () => new BceClient(server!.urls.bj!, { accessKeyId: ak, secretAccessKey: sk }),
    async newDisk(body = { cdsSizeInGB: 1 }) {
      const [id] = (await send(bj!, 'POST', '/v2/volume', { body })).volumeIds;
      await waitVolume(bj!, id);
      return id;
    },
    async readData(id, offset, length) {
      const raw = region.http();
      try {
        const res = await raw.send({ method: 'GET', path: `/v2/volume/${id}/data`, headers: { range: `bytes=${offset}-${offset + length - 1}` } });
        const bytes = Buffer.from(await res.body.arrayBuffer());
        assert.equal(bytes.length, length);
        return bytes;
      } finally {
        await raw.close();
      }
    },
    async volumeStatus(id) {
      return (await send(bj!, 'GET', `/v2/volume/${id}`)).volume.status;
    },
  };
  return region;
}
