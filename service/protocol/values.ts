/**
 * Outgoing values made safe for the wire. dbus-next throws while
 * marshalling a 'u' that is not an integer in range, a 't' it cannot
 * convert, or a string holding a NUL; values from the engine (hook output,
 * percentages a hook reported) go through these first so a signal or reply
 * is never lost to a marshalling error.
 */

/** Largest 't' we send: Cockpit and JSON clients read 't' as a JS number. */
export const MAX_SAFE_U64 = BigInt(Number.MAX_SAFE_INTEGER);

/** Any number as a valid 'u': an integer in 0..2^32-1. */
export function toUint32(n: number): number {
  if (!Number.isFinite(n) || n <= 0) return 0;
  return Math.min(Math.floor(n), 0xffffffff);
}

/** A percentage as a 'u' in 0..100. */
export function toPercent(n: number): number {
  return Math.min(toUint32(Math.round(Number.isFinite(n) ? n : 0)), 100);
}

/** Any number as a 't' (BigInt, as dbus-next expects), kept below 2^53. */
export function toUint64(n: number): bigint {
  if (!Number.isFinite(n) || n <= 0) return 0n;
  const v = BigInt(Math.trunc(n));
  return v > MAX_SAFE_U64 ? MAX_SAFE_U64 : v;
}

/**
 * A string a D-Bus 's' may carry, at most `maxBytes` UTF-8 bytes: NULs
 * become U+FFFD, and a longer string is cut at a character boundary with
 * an ellipsis.
 */
export function toBusString(s: string, maxBytes = 4096): string {
  let out = s.includes('\0') ? s.replace(/\0/g, '\uFFFD') : s;
  if (Buffer.byteLength(out, 'utf8') <= maxBytes) return out;
  const buf = Buffer.from(out, 'utf8').subarray(0, Math.max(0, maxBytes - 3));
  // Drop a partial UTF-8 sequence at the cut (decoding would add U+FFFD).
  out = buf.toString('utf8').replace(/\uFFFD$/, '');
  return `${out}\u2026`;
}
