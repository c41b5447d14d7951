/**
 * The bytes form of a hook's `STATUS=` text (docs/hooks.md, "Bytes
 * progress"): a status that says how many bytes of which images a hook has
 * fetched, as the bound-images hook writes it once a second
 * (packaging/hooks/bound-images-store.sh, progress_tick):
 *
 *     pulling registry.example.com/app:2.0 120/300 MB, pulling db:16 512/2048 kB (2/4 images ready)
 *
 * The grammar, whole text, nothing before or after:
 *
 *     status  = pull *( ", " pull ) [ " (" READY "/" COUNT " image" ["s"] " ready)" ]
 *     pull    = "pulling " NAME " " DONE [ "/" TOTAL ] " " UNIT
 *     NAME    = 1*( any character but space, comma and control characters )
 *     DONE, TOTAL = 1*15DIGIT [ "." 1*3DIGIT ]      READY, COUNT = 1*6DIGIT
 *     UNIT    = "B" | "kB" | "MB" | "GB"            (decimal: 1, 10^3, 10^6, 10^9 bytes)
 *
 * DONE and TOTAL share the pull's UNIT. A pull without TOTAL has an unknown
 * total (0, bootc's "unspecified"); DONE above TOTAL counts as TOTAL. Each
 * NAME appears once; READY <= COUNT, and the pulls listed are not among the
 * READY ones (READY + pulls <= COUNT). Anything else is not a bytes status:
 * the parser returns null and never throws, so any other STATUS text is
 * just text.
 */

/** One image of a bytes status. */
export interface ImageBytes {
  name: string;
  /** Bytes fetched so far. */
  bytes: number;
  /** Bytes in all; 0 when the hook did not say. */
  bytesTotal: number;
}

export interface BytesStatus {
  /** The running pulls, in the order of the text. */
  images: ImageBytes[];
  /** Images ready and images in all, when the text has the "(READY/COUNT images ready)" tail. */
  ready: number | null;
  count: number | null;
}

const UNITS: Record<string, number> = { B: 1, kB: 1e3, MB: 1e6, GB: 1e9 };
const TAIL = / \((\d{1,6})\/(\d{1,6}) images? ready\)$/;
const PULL = /^pulling ([^\s,\p{Cc}]+) (\d{1,15}(?:\.\d{1,3})?)(?:\/(\d{1,15}(?:\.\d{1,3})?))? (B|kB|MB|GB)$/u;

function toBytes(amount: string, unit: number): number | null {
  const n = Math.round(Number(amount) * unit);
  return Number.isSafeInteger(n) ? n : null;
}

/** The bytes status in `text`, or null when `text` is not one (see the grammar above). */
export function parseBytesStatus(text: string): BytesStatus | null {
  if (typeof text !== 'string' || !text.startsWith('pulling ')) return null;
  let body = text;
  let ready: number | null = null;
  let count: number | null = null;
  const tail = TAIL.exec(body);
  if (tail) {
    ready = Number(tail[1]);
    count = Number(tail[2]);
    if (ready > count) return null;
    body = body.slice(0, tail.index);
  }
  const images: ImageBytes[] = [];
  const seen = new Set<string>();
  for (const part of body.split(', ')) {
    const m = PULL.exec(part);
    if (!m) return null;
    const [, name, done, total, unitName] = m as unknown as [string, string, string, string | undefined, string];
    if (seen.has(name)) return null;
    seen.add(name);
    const unit = UNITS[unitName]!;
    const bytesTotal = total === undefined ? 0 : toBytes(total, unit);
    const bytes = toBytes(done, unit);
    if (bytes === null || bytesTotal === null) return null;
    images.push({ name, bytes: bytesTotal > 0 && bytes > bytesTotal ? bytesTotal : bytes, bytesTotal });
  }
  if (count !== null && ready! + images.length > count) return null;
  return { images, ready, count };
}
