/**
 * Test harness for the NBD server: temporary directories, a server over FileExportProvider with
 * captured logs, and child processes (qemu-img, qemu-io, nbdcopy, nbdinfo) that are always reaped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startNbdServer, type NbdServer, type NbdServerOptions } from '../../src/blockdev/nbd/index.ts';
import { FileExportProvider, type FileExportSpec } from './file-block-target.ts';

export interface LogEntry {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

export interface TestServer {
  server: NbdServer;
  provider: FileExportProvider;
  port: number;
  dir: string;
  logs: LogEntry[];
  uri(exportName: string): string;
  /** Path of an export's backing file. */
  file(exportName: string): string;
  /** Closes the server, kills every child started through this harness, removes the directory. */
  cleanup(): Promise<void>;
}

export type ExportDef = Omit<FileExportSpec, 'path'> & { path?: string };

export async function startTestServer(
  exportDefs: ExportDef[],
  options: Partial<Omit<NbdServerOptions, 'exports' | 'host' | 'port' | 'log'>> = {},
): Promise<TestServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'snapferry-nbd-'));
  const provider = new FileExportProvider();
  const files = new Map<string, string>();
  for (const def of exportDefs) {
    const file = def.path ?? path.join(dir, `${def.name}.raw`);
    files.set(def.name, file);
    await provider.add({ ...def, path: file });
  }
  const logs: LogEntry[] = [];
  const server = await startNbdServer({
    ...options,
    host: '127.0.0.1',
    port: 0,
    exports: provider,
    log: (level, msg, fields) => {
      logs.push({ level, msg, fields });
      if (process.env.NBD_TEST_LOG) console.error(level, msg, JSON.stringify(fields));
    },
  });
  let cleaned = false;
  return {
    server,
    provider,
    port: server.port,
    dir,
    logs,
    uri: (name) => `nbd://127.0.0.1:${server.port}/${name}`,
    file: (name) => files.get(name)!,
    async cleanup() {
      if (cleaned) return;
      cleaned = true;
      await killAllChildren();
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// ---- child processes ----------------------------------------------------------------------------

const children = new Set<ChildProcess>();

export interface ToolResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface SpawnedTool {
  child: ChildProcess;
  result: Promise<ToolResult>;
}

/** Starts a tool; it is killed by `killAllChildren` (and after `timeoutMs`) if still running. */
export function spawnTool(cmd: string, args: string[], timeoutMs = 60_000, env?: Record<string, string>): SpawnedTool {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ? { ...process.env, ...env } : process.env });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => {
    stderr += `\n[harness] killed after ${timeoutMs} ms`;
    child.kill('SIGKILL');
  }, timeoutMs);
  const result = new Promise<ToolResult>((resolve) => {
    child.on('error', (err) => {
      stderr += `\n[harness] spawn error: ${err.message}`;
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, result };
}

export function runTool(cmd: string, args: string[], timeoutMs = 60_000, env?: Record<string, string>): Promise<ToolResult> {
  return spawnTool(cmd, args, timeoutMs, env).result;
}

/** Runs a tool and throws with its output unless it exits 0. */
export async function runToolOk(cmd: string, args: string[], timeoutMs = 60_000): Promise<ToolResult> {
  const r = await runTool(cmd, args, timeoutMs);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
  return r;
}

export async function killAllChildren(): Promise<void> {
  const waits: Array<Promise<void>> = [];
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      waits.push(new Promise((resolve) => c.once('close', () => resolve())));
      c.kill('SIGKILL');
    }
  }
  await Promise.all(waits);
}

// ---- misc ---------------------------------------------------------------------------------------

export async function sha256File(file: string, length?: number): Promise<string> {
  let data = await readFile(file);
  if (length !== undefined) {
    if (data.length < length) data = Buffer.concat([data, Buffer.alloc(length - data.length)]);
    data = data.subarray(0, length);
  }
  return createHash('sha256').update(data).digest('hex');
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

export async function waitFor(cond: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function pseudoRandom(length: number, seed: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf[i] = x & 0xff;
  }
  return buf;
}
