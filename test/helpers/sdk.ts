/** The official JavaScript SDK (@baiducloud/sdk): BceBaseClient.sendRequest signs and sends any BCC call. */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { BceBaseClient } = require('@baiducloud/sdk');

export type SdkClient = { sendRequest(method: string, path: string, args: unknown): Promise<{ body: any }>; timeOffset?: number };

export function sdkClient(endpoint: string, ak: string, sk: string): SdkClient {
  return new BceBaseClient({ endpoint, credentials: { ak, sk } }, 'bcc', false);
}

export interface SdkCall {
  body?: unknown;
  params?: Record<string, string>;
}

export async function send(c: SdkClient, method: string, path: string, opts: SdkCall = {}): Promise<any> {
  const res = await c.sendRequest(method, path, {
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    params: opts.params ?? {},
    headers: { 'Content-Type': 'application/json; charset=UTF-8' },
  });
  return res.body;
}

/** Sends a call that must fail; returns its HTTP status and BCE error code. */
export async function sendError(c: SdkClient, method: string, path: string, opts: SdkCall = {}): Promise<{ status: number; code: string }> {
  try {
    await send(c, method, path, opts);
  } catch (e: any) {
    return { status: e.status_code, code: e.code };
  }
  assert.fail(`${method} ${path} succeeded but should have failed`);
}

export async function until<T>(fn: () => Promise<T | null | false | undefined>, ms = 60_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function waitSnapshot(c: SdkClient, id: string, ms = 120_000): Promise<any> {
  return until(async () => {
    const s = (await send(c, 'GET', `/v2/snapshot/${id}`)).snapshot;
    if (s.status === 'CreatedFailed') throw new Error(`snapshot ${id} failed`);
    return s.status === 'Available' ? s : null;
  }, ms, `snapshot ${id} Available`);
}

export async function waitVolume(c: SdkClient, id: string, ms = 120_000): Promise<any> {
  return until(async () => {
    const v = (await send(c, 'GET', `/v2/volume/${id}`)).volume;
    if (v.status === 'Error') throw new Error(`volume ${id} failed`);
    return v.status === 'Available' ? v : null;
  }, ms, `volume ${id} Available`);
}
