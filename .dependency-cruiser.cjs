/**
 * The layer rule of docs/design.md: imports point downwards only. Checked in CI (`npm run lint:layers`).
 *   cli -> main -> api -> services -> replication -> jobs -> repository -> chunkstore/metadata/blockdev -> domain -> lib
 */
const layers = ['cli', 'api', 'services', 'replication', 'jobs', 'repository', 'chunkstore', 'metadata', 'blockdev', 'domain', 'lib'];
// What each layer may import (besides itself). main.ts and config.ts are the composition root.
const allowed = {
  cli: ['lib', 'domain', 'config', 'main'],
  api: ['services', 'domain', 'lib', 'chunkstore', 'blockdev'],
  services: ['replication', 'jobs', 'repository', 'chunkstore', 'metadata', 'blockdev', 'domain', 'lib'],
  replication: ['jobs', 'repository', 'chunkstore', 'metadata', 'domain', 'lib'],
  jobs: ['metadata', 'domain', 'lib'],
  repository: ['chunkstore', 'blockdev', 'domain', 'lib'],
  chunkstore: ['domain', 'lib'],
  metadata: ['domain', 'lib'],
  blockdev: ['domain', 'lib'],
  domain: [],
  lib: [],
};

const forbidden = layers.map((layer) => ({
  name: `${layer}-imports-downwards-only`,
  severity: 'error',
  from: { path: `^src/${layer}/` },
  to: {
    path: '^src/',
    pathNot: [`^src/${layer}/`, ...allowed[layer].map((l) => (l === 'config' || l === 'main' ? `^src/${l}\\.ts$` : `^src/${l}/`))],
  },
}));

forbidden.push({
  name: 'only-main-picks-implementations',
  comment: 'Concrete stores (SQLite, local dir, S3, PostgreSQL) are chosen in main.ts and region-stores.ts only.',
  severity: 'error',
  from: { path: '^src/', pathNot: ['^src/(main|region-stores)\\.ts$', '^src/(metadata|chunkstore)/'] },
  to: { path: ['^src/metadata/(sqlite|postgres)/', '^src/chunkstore/(local-dir-store|s3-store)'] },
});

forbidden.push({ name: 'no-circular', severity: 'error', from: {}, to: { circular: true } });

module.exports = {
  forbidden,
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
