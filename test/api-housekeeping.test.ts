/** What the region's housekeeping timer does on its own: expired snapshots go, referenced data stays. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startHarness, type Harness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';

let h: Harness;
before(async () => (h = await startHarness('bj', { gcIntervalMs: 300 })));
after(async () => h.close());

test('a snapshot past its retentionInDays is deleted automatically; one without retention stays', async () => {
  const [volumeId] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1 })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${volumeId}`)).json.volume.status === 'Available');
  const expiring = (await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: 'weekly', retentionInDays: 7 })).json.snapshotId;
  const keeper = (await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: 'forever' })).json.snapshotId;
  for (const id of [expiring, keeper]) await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${id}`)).json.snapshot.status === 'Available');
  // Eight days pass for the weekly snapshot.
  await h.region.meta.snapshots.update(expiring, { createTime: Date.now() - 8 * 86_400_000 });
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${expiring}`)).status === 404, 10_000);
  assertBceError(await h.call('GET', `/v2/snapshot/${expiring}`), 404, 'NoSuchObject');
  assert.equal((await h.call('GET', `/v2/snapshot/${keeper}`)).json.snapshot.status, 'Available');
  // The remaining snapshot still restores after garbage collection ran many times.
  const [restored] = (await h.call('POST', '/v2/volume', { snapshotId: keeper })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${restored}`)).json.volume.status === 'Available');
});
