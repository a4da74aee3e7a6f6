#!/usr/bin/env -S node --max-semi-space-size=8
// Entry point for `npx snapferry` and `npm start`. The source is TypeScript run through tsx's
// loader, so there is no build step to forget: what is in src/ is what runs. The shebang's V8 flags
// are src/cli/node-flags.ts's (V8 takes them only at start).
import { register } from 'tsx/esm/api';
register();
await import('../src/cli/index.ts');
