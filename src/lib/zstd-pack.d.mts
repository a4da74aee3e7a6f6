// Types of zstd-pack.mjs (the rule and compressor shared by the hash workers and the copy job).
export declare const PACK_SAMPLE_BYTES: number;
export declare const PACK_WORTH: number;
export declare const PACK_LEVEL: number;
export declare const PACK_MIN_AT_REST: number;

export declare class Packer {
  /** The last frame is `scratch[0, n)`, valid until the next call. */
  readonly scratch: Buffer;
  pack(input: Uint8Array, min: number, level?: number): number;
}
