/**
 * Failure kinds inside the NBD server and how backend errors map to NBD error values.
 */
import { BlockIoError } from '../block-target.ts';
import { NBD_EINVAL, NBD_EIO } from './constants.ts';

/**
 * The client violated the protocol in a way that leaves no option but a hard disconnect (bad magic,
 * oversized payload, unusable export in NBD_OPT_EXPORT_NAME, ...). Only its connection is closed.
 */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

/** NBD error value for an exception thrown by a BlockTarget, and whether it was expected. */
export function errnoForTargetError(err: unknown): { errno: number; expected: boolean } {
  if (err instanceof BlockIoError) return { errno: NBD_EIO, expected: true };
  if (err instanceof RangeError) return { errno: NBD_EINVAL, expected: true };
  return { errno: NBD_EIO, expected: false };
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
