#!/usr/bin/env node
// Entry point for `npx snapferry` and `npm start`. The source is TypeScript run through tsx's
// loader, so there is no build step to forget: what is in src/ is what runs.
import { register } from 'tsx/esm/api';
register();
await import('../src/cli/index.ts');
