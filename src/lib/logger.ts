/**
 * Structured logs: one JSON object per line on stderr (stdout is kept for ready lines and command
 * output). `SNAPFERRY_LOG_LEVEL` (debug, info, warn, error; default info) drops the levels below it.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFn = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

const RANK: Record<LogLevel, number> = { debug: -1, info: 0, warn: 1, error: 2 };

export function jsonLogger(base: Record<string, unknown>, stream: NodeJS.WritableStream = process.stderr, minimum: LogLevel = levelFromEnv()): LogFn {
  return (level, msg, fields) => {
    if (RANK[level] < RANK[minimum]) return;
    stream.write(JSON.stringify({ time: new Date().toISOString(), level, ...base, msg, ...fields }) + '\n');
  };
}

function levelFromEnv(): LogLevel {
  const v = process.env.SNAPFERRY_LOG_LEVEL;
  return v === 'debug' || v === 'warn' || v === 'error' ? v : 'info';
}
