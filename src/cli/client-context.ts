/**
 * What every client command shares: which region to talk to, with which keys, how to print, and
 * how a failure is reported (the server's code and message on stderr, exit code 1).
 */
import { BceClient, BceError } from '../lib/bce-client.ts';

export interface ClientFlags {
  endpoint?: string;
  json?: boolean;
}

export interface ClientContext {
  client: BceClient;
  json: boolean;
  /** Prints a result: as JSON with --json, else the human text. */
  print(result: unknown, human: () => string): void;
}

export function clientContext(flags: ClientFlags): ClientContext {
  const endpoint = flags.endpoint ?? process.env.SNAPFERRY_ENDPOINT ?? 'http://127.0.0.1:8801';
  const accessKeyId = process.env.SNAPFERRY_ACCESS_KEY_ID;
  const secretAccessKey = process.env.SNAPFERRY_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new UsageError('set SNAPFERRY_ACCESS_KEY_ID and SNAPFERRY_SECRET_ACCESS_KEY (printed by the server on its first start, kept in <data-dir>/credentials.json)');
  }
  const json = flags.json === true;
  return {
    client: new BceClient(endpoint, { accessKeyId, secretAccessKey }),
    json,
    print(result, human) {
      process.stdout.write(json ? JSON.stringify(result, null, 2) + '\n' : human() + '\n');
    },
  };
}

export class UsageError extends Error {
  override name = 'UsageError';
}

/** Runs a command body, turning failures into a message and a non-zero exit code. */
export async function runClientCommand(flags: ClientFlags, body: (ctx: ClientContext) => Promise<void>): Promise<void> {
  let ctx: ClientContext | null = null;
  try {
    ctx = clientContext(flags);
    await body(ctx);
  } catch (e) {
    if (e instanceof BceError) {
      const detail = { code: e.code, message: e.message, status: e.status, requestId: e.requestId };
      if (flags.json) process.stderr.write(JSON.stringify({ error: detail }) + '\n');
      else process.stderr.write(`error: ${e.code}: ${e.message}${e.requestId ? ` (request ${e.requestId})` : ''}\n`);
    } else {
      process.stderr.write(`error: ${(e as Error).message}\n`);
    }
    process.exitCode = e instanceof UsageError ? 2 : 1;
  } finally {
    await ctx?.client.close();
  }
}

/** Polls `fetch` until `done` says so; `onTick` sees each state. */
export async function waitUntil<T>(fetch: () => Promise<T>, done: (v: T) => boolean, onTick?: (v: T) => void, intervalMs = 500): Promise<T> {
  for (;;) {
    const v = await fetch();
    onTick?.(v);
    if (done(v)) return v;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Every item of a BCC list call, following `nextMarker` page by page. */
export async function listAll<T>(ctx: ClientContext, path: string, key: string, query: Record<string, string | undefined> = {}): Promise<T[]> {
  const all: T[] = [];
  let marker: string | undefined;
  do {
    const page = await ctx.client.json<Record<string, unknown> & { nextMarker?: string }>({ method: 'GET', path, query: { ...query, marker } });
    all.push(...(page[key] as T[]));
    marker = page.nextMarker;
  } while (marker);
  return all;
}
