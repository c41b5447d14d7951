/** Small formatting helpers shared by the displays and tables. */

/** Microseconds since the epoch as local "YYYY-MM-DD HH:MM:SS"; '' for 0. */
export function formatUsec(usec: number): string {
  if (!usec) return '';
  const d = new Date(Math.floor(usec / 1000));
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A duration in microseconds as "1.2s", "3m04s". */
export function formatDuration(usec: number): string {
  if (usec < 0) usec = 0;
  const s = usec / 1e6;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.round(s - m * 60)).padStart(2, '0')}s`;
}

/** The last element of a transaction path: its id. */
export function txIdOf(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** Cut `s` to `width` columns (code units; good enough for the ASCII we draw), with an ellipsis. */
export function truncate(s: string, width: number, ellipsis = '...'): string {
  if (width <= 0) return '';
  if (s.length <= width) return s;
  if (width <= ellipsis.length) return s.slice(0, width);
  return s.slice(0, width - ellipsis.length) + ellipsis;
}

/** Control characters (other than tab) as visible escapes: hook output must not drive the terminal. */
export function sanitize(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\x00-\x08\x0a-\x1f\x7f\x9b]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** Rows as left-aligned columns separated by two spaces; the last column is not padded. */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd())
    .join('\n') + '\n';
}
