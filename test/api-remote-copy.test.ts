/**
 * Remote copy rules that need no second region: validation, CannotCopy, POST, and what happens
 * when a destination never answers (the deadline turns the copy failed, and says why).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startHarness, type Harness } from './helpers/region-harness.ts';
import { assertBceError } from './helpers/bce-assert.ts';

let h: Harness;

before(async () => {
  // hkg is a peer on a port nothing listens on; copies to it can only fail, after a short deadline.
  h = await startHarness('bj', { peers: { hkg: 'http://127.0.0.1:9' }, copyDeadlineMs: 2500, gcIntervalMs: 300 });
});
after(async () => h.close());

async function availableSnapshot(storageType = 'hp1'): Promise<string> {
  const [volumeId] = (await h.call('POST', '/v2/volume', { cdsSizeInGB: 1, storageType })).json.volumeIds;
  await h.waitFor(async () => (await h.call('GET', `/v2/volume/${volumeId}`)).json.volume.status === 'Available');
  const { snapshotId } = (await h.call('POST', '/v2/snapshot', { volumeId, snapshotName: 'src' })).json;
  await h.waitFor(async () => (await h.call('GET', `/v2/snapshot/${snapshotId}`)).json.snapshot.status === 'Available');
  return snapshotId;
}

test('an unreachable destination: ids are answered at once (POST works too); past the deadline the copy fails with its reason', async () => {
  const id = await availableSnapshot();
  const res = await h.call('POST', `/v2/snapshot/remote_copy/${id}`, { destRegionInfos: [{ destRegion: 'hkg', name: 'far' }] });
  assert.equal(res.status, 200, JSON.stringify(res.json));
  const copyId = res.json.result[0].snapshotId;
  assert.deepEqual(res.json.result, [{ region: 'hkg', snapshotId: copyId }]);
  // While the job still retries, the source may not be deleted.
  assertBceError(await h.call('DELETE', `/v2/snapshot/${id}`), 403, 'SnapshotOperationForbidden');
  const failed = await h.waitFor(async () => {
    const copies = (await h.call('GET', `/v2/snapshot/remote_copy/${id}`)).json.copies;
    return copies[0]?.state === 'failed' ? copies[0] : null;
  }, 30_000);
  assert.equal(failed.snapshotId, copyId);
  assert.ok(failed.attempts >= 2, 'it retried before giving up');
  assert.match(failed.lastError, /127\.0\.0\.1:9|ECONNREFUSED|connect/i);
  assert.equal((await h.call('DELETE', `/v2/snapshot/${id}`)).status, 200, 'no copy reads it any more');
});

test('snapshots of local disks cannot leave their region: 403 snapshot.CannotCopy', async () => {
  const id = await availableSnapshot('local-ssd');
  assertBceError(await h.call('PUT', `/v2/snapshot/remote_copy/${id}`, { destRegionInfos: [{ destRegion: 'hkg' }] }), 403, 'snapshot.CannotCopy');
});

test('a source that is not Available, and bodies that are not JSON, are refused', async () => {
  const id = await availableSnapshot();
  await h.region.meta.snapshots.update(id, { status: 'CreatedFailed' });
  assertBceError(await h.call('PUT', `/v2/snapshot/remote_copy/${id}`, { destRegionInfos: [{ destRegion: 'hkg' }] }), 409, 'OperationDenied');
  assertBceError(await h.call('PUT', `/v2/snapshot/remote_copy/${id}`, '{"destRegionInfos": ['), 400, 'MalformedJSON');
  assertBceError(await h.call('PUT', `/v2/snapshot/remote_copy/${id}`, '[]'), 400, 'InappropriateJSON');
  assertBceError(await h.call('GET', '/v2/snapshot/remote_copy/s-nothere1'), 404, 'NoSuchObject');
});

test('an incoming copy whose source goes silent past the deadline fails at the destination, and can then be deleted', async () => {
  const region = { ak: 'snapferry-region-gz', sk: h.config.regionSecret };
  const reserve = await h.call('PUT', '/internal/v1/snapshots/s-incomin1', {
    accountId: 'alice', name: 'from-gz', desc: '', sizeInGB: 1, storageType: 'hp1', sourceRegion: 'gz', sourceSnapshotId: 's-gzsource',
  }, { keys: region });
  assert.equal(reserve.status, 200, JSON.stringify(reserve.json));
  assert.equal((await h.call('GET', '/v2/snapshot/s-incomin1')).json.snapshot.status, 'Creating');
  assertBceError(await h.call('DELETE', '/v2/snapshot/s-incomin1'), 403, 'SnapshotOperationForbidden');
  await h.waitFor(async () => (await h.call('GET', '/v2/snapshot/s-incomin1')).json.snapshot.status === 'CreatedFailed', 15_000);
  assert.equal((await h.call('DELETE', '/v2/snapshot/s-incomin1')).status, 200);
  // A tenant's keys cannot reach the internal endpoints.
  assertBceError(await h.call('PUT', '/internal/v1/snapshots/s-incomin2', { accountId: 'alice' }), 403, 'InvalidAccessKeyId');
});
