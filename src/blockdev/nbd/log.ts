/** Logging hook of the NBD server (the service plugs its structured logger in here). */
export type NbdLogLevel = 'debug' | 'info' | 'warn' | 'error';
export type NbdLogFields = Record<string, unknown>;
export type NbdLogFn = (level: NbdLogLevel, msg: string, fields: NbdLogFields) => void;

/** Wraps a user-supplied log function so that a throwing logger can never break a connection. */
export function safeLogger(log: NbdLogFn | undefined): NbdLogFn {
  if (!log) return () => {};
  return (level, msg, fields) => {
    try {
      log(level, msg, fields);
    } catch {
      // A broken logger must not take the protocol down with it.
    }
  };
}
