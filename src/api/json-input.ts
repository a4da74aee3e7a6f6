/**
 * Reading BCC request bodies. Rules from bcc-api.md §1: unknown fields are ignored; `null`, `""` and
 * `0` mean "not given" (the Go SDK sends `"tags":null`, `"encryptKey":""`, `"renewTime":0` on every
 * create). A body that is not JSON is MalformedJSON; a field of the wrong type is InappropriateJSON.
 */
import type { Readable } from 'node:stream';
import { ApiError } from '../domain/errors.ts';
import type { Tag } from '../domain/tag.ts';

export type JsonObject = Record<string, unknown>;

/** Control-plane bodies are small; a larger one is refused before it is buffered. */
export const MAX_JSON_BODY = 1 << 20;

export async function readJsonBody(stream: Readable, required: boolean): Promise<JsonObject> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > MAX_JSON_BODY) throw new ApiError('EntityTooLarge', `A JSON body may be at most ${MAX_JSON_BODY} bytes.`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (text === '') {
    if (required) throw new ApiError('MalformedJSON', 'The request needs a JSON body.');
    return {};
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ApiError('MalformedJSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new ApiError('InappropriateJSON', 'The JSON body must be an object.');
  return value as JsonObject;
}

const given = (v: unknown): boolean => v !== undefined && v !== null && v !== '' && v !== 0;

export function optString(body: JsonObject, field: string): string | null {
  const v = body[field];
  if (!given(v)) return null;
  if (typeof v !== 'string') throw wrongType(field, 'a string');
  return v;
}

export function reqString(body: JsonObject, field: string): string {
  const v = optString(body, field);
  if (v === null) throw new ApiError('InappropriateJSON', `The field ${field} is required.`);
  return v;
}

/** Integers may arrive as numbers or numeric strings (some SDK models declare them as strings). */
export function optInt(body: JsonObject, field: string): number | null {
  const v = body[field];
  if (!given(v)) return null;
  const n = typeof v === 'string' && /^-?\d+$/.test(v.trim()) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n)) throw wrongType(field, 'an integer');
  return n;
}

export function optTags(body: JsonObject, field: string): Tag[] | null {
  const v = body[field];
  if (!given(v)) return null;
  if (!Array.isArray(v)) throw wrongType(field, 'an array of {tagKey, tagValue}');
  return v.map((t, i) => {
    if (!t || typeof t !== 'object' || typeof (t as Tag).tagKey !== 'string') throw wrongType(`${field}[${i}]`, 'an object with tagKey');
    const value = (t as Tag).tagValue;
    if (value !== undefined && value !== null && typeof value !== 'string') throw wrongType(`${field}[${i}].tagValue`, 'a string');
    return { tagKey: (t as Tag).tagKey, tagValue: value ?? '' };
  });
}

export function optArray(body: JsonObject, field: string): unknown[] | null {
  const v = body[field];
  if (v === undefined || v === null) return null;
  if (!Array.isArray(v)) throw wrongType(field, 'an array');
  return v;
}

function wrongType(field: string, expected: string): ApiError {
  return new ApiError('InappropriateJSON', `The field ${field} must be ${expected}.`);
}
