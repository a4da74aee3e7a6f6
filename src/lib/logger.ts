/** Structured logs: one JSON object per line on stderr (stdout is kept for ready lines and output). */
export type LogLevel = 'info' | 'warn' | 'error';
export type LogFn = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

export function jsonLogger(base: Record<string, unknown>, stream: NodeJS.WritableStream = process.stderr, quiet = false): LogFn {
  return (level, msg, fields) => {
    if (quiet && level === 'info') return;
    stream.write(JSON.stringify({ time: new Date().toISOString(), level, ...base, msg, ...fields }) + '\n');
  };
}
