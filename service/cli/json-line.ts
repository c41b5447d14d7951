/**
 * JSON lines for machines. 64-bit D-Bus integers arrive as BigInt, which
 * JSON.stringify refuses: they become numbers when exact, strings otherwise.
 */
function replacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER)
      ? Number(value) : value.toString();
  }
  if (Buffer.isBuffer(value)) return value.toString('base64');
  if (value !== null && typeof value === 'object' && (value as { type?: unknown }).type === 'Buffer'
    && Array.isArray((value as { data?: unknown }).data)) {
    return Buffer.from((value as { data: number[] }).data).toString('base64');
  }
  return value;
}

/** One value as one line of JSON, newline included. */
export function jsonLine(value: unknown): string {
  return `${JSON.stringify(value, replacer)}\n`;
}
