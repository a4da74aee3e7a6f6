// Runs every test file under test/ with node:test. Node 20's --test does not discover .ts files
// or expand globs by itself, so the list is built here. Extra arguments narrow the run:
// `npm test -- nbd` runs only files whose name contains "nbd".
//
// The scaled-backend tests need a real PostgreSQL and a real Ceph RGW. When the selected files
// include them and no server is named in the environment (SNAPFERRY_TEST_PG_URL,
// SNAPFERRY_TEST_S3_ENDPOINT), the run re-executes itself under scripts/with-postgres.sh and
// scripts/with-rgw.sh, which start throwaway servers (Debian's packages; see .ci/run) and stop them
// afterwards. SNAPFERRY_SKIP_PG=1 / SNAPFERRY_SKIP_S3=1 skip those tests visibly instead.
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const filters = process.argv.slice(2);
const files = readdirSync('test')
  .filter((f) => f.endsWith('.test.ts'))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort()
  .map((f) => `test/${f}`);
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const env = process.env;
const wrappers = [];
if (files.some((f) => f.includes('postgres')) && !env.SNAPFERRY_TEST_PG_URL && env.SNAPFERRY_SKIP_PG !== '1') wrappers.push('scripts/with-postgres.sh');
if (files.some((f) => f.includes('-s3')) && !env.SNAPFERRY_TEST_S3_ENDPOINT && env.SNAPFERRY_SKIP_S3 !== '1') wrappers.push('scripts/with-rgw.sh');
if (wrappers.length > 0) {
  const again = spawnSync(wrappers[0], [...wrappers.slice(1), process.execPath, 'scripts/run-tests.mjs', ...filters], { stdio: 'inherit' });
  process.exit(again.status ?? 1);
}
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-timeout=600000', ...files],
  { stdio: 'inherit' },
);
process.exit(result.status ?? 1);
