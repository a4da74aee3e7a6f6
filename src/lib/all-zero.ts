const ZERO_PROBE = Buffer.alloc(64 * 1024);

/** True when every byte is zero; compares against a zero buffer in 64 KiB steps (memcmp speed). */
export function isAllZero(data: Uint8Array): boolean {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let at = 0; at < buf.length; at += ZERO_PROBE.length) {
    const end = Math.min(buf.length, at + ZERO_PROBE.length);
    if (!buf.subarray(at, end).equals(ZERO_PROBE.subarray(0, end - at))) return false;
  }
  return true;
}
