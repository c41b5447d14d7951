/**
 * Run order of hooks from After=/Before= (docs/design.md "Hooks"). Pure.
 *
 * `A After=B` and `B Before=A` both mean B runs before A. Names that match
 * no hook are ignored (so an image can order itself against optional
 * hooks). Among hooks free to run, the smallest name (in code point order,
 * which is UTF-8 byte order) goes first, so the order depends only on the
 * set of hooks, never on the order they were found in.
 */
import { PreStageError } from '../model/errors.js';

/** What ordering needs to know of a hook. */
export interface Orderable {
  name: string;
  after: readonly string[];
  before: readonly string[];
  /** The file it came from, for error messages. */
  source?: string;
}

/** Code point (= UTF-8 byte) order; JS `<` compares UTF-16 units instead. */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i)!;
    const y = b.codePointAt(i)!;
    if (x !== y) return x < y ? -1 : 1;
    if (x > 0xffff) i++;
  }
  return a.length - b.length;
}

/** Why u runs before v, for the cycle message. */
interface Edge {
  to: number;
  /** The hook whose file declares it, and the declaration. */
  declaredBy: number;
  how: string;
}

/**
 * Return `hooks` in run order (a new array of the same objects).
 * O((n + e) log n) for n hooks and e After=/Before= entries.
 * Throws PreStageError('InvalidHook') for duplicate names and for an
 * ordering cycle; the cycle message lists its hooks in order, the files
 * they come from, and the declarations that form it.
 */
export function orderHooks<T extends Orderable>(hooks: readonly T[]): T[] {
  const n = hooks.length;
  // Rank by name once, so the heap compares integers.
  const byName = hooks.map((_, i) => i).sort((a, b) => compareNames(hooks[a]!.name, hooks[b]!.name));
  const rank = new Array<number>(n);
  const index = new Map<string, number>();
  byName.forEach((h, r) => {
    rank[h] = r;
    const name = hooks[h]!.name;
    const prev = index.get(name);
    if (prev !== undefined) {
      throw new PreStageError('InvalidHook',
        `two hooks are named '${name}'${describeSources([hooks[prev]!, hooks[h]!])}`);
    }
    index.set(name, h);
  });

  const out: Edge[][] = hooks.map(() => []);
  const indegree = new Array<number>(n).fill(0);
  const addEdge = (from: number, to: number, declaredBy: number, how: string) => {
    out[from]!.push({ to, declaredBy, how });
    indegree[to]!++;
  };
  hooks.forEach((h, i) => {
    for (const a of h.after) {
      const j = index.get(a);
      if (j !== undefined) addEdge(j, i, i, `After=${a}`);
    }
    for (const b of h.before) {
      const j = index.get(b);
      if (j !== undefined) addEdge(i, j, i, `Before=${b}`);
    }
  });

  const heap = new MinHeap((a, b) => rank[a]! - rank[b]!);
  for (let i = 0; i < n; i++) if (indegree[i] === 0) heap.push(i);
  const order: T[] = [];
  while (heap.size > 0) {
    const u = heap.pop();
    order.push(hooks[u]!);
    for (const e of out[u]!) {
      if (--indegree[e.to]! === 0) heap.push(e.to);
    }
  }
  if (order.length === n) return order;
  throw cycleError(hooks, out, indegree, byName);
}

/**
 * Every hook left with indegree > 0 has a predecessor that is also left, so
 * walking predecessors from any of them must come back to a hook already
 * seen: that loop is a cycle. Start from the smallest name and always take
 * the smallest predecessor, so the message is deterministic.
 */
function cycleError<T extends Orderable>(
  hooks: readonly T[], out: Edge[][], indegree: number[], byName: number[],
): PreStageError {
  const left = (i: number) => indegree[i]! > 0;
  // Predecessor lists among the remaining hooks, each with the edge used.
  const preds = new Map<number, { from: number; edge: Edge }[]>();
  out.forEach((edges, from) => {
    if (!left(from)) return;
    for (const edge of edges) {
      if (!left(edge.to)) continue;
      let l = preds.get(edge.to);
      if (!l) preds.set(edge.to, (l = []));
      l.push({ from, edge });
    }
  });
  const rankOf = new Map<number, number>(byName.map((h, r) => [h, r]));
  const start = byName.find(left)!;
  const seenAt = new Map<number, number>();
  const walk: { node: number; edge: Edge | null }[] = [];
  let cur = start;
  let via: Edge | null = null;
  while (!seenAt.has(cur)) {
    seenAt.set(cur, walk.length);
    walk.push({ node: cur, edge: via });
    const p = preds.get(cur)!.reduce((best, x) => (rankOf.get(x.from)! < rankOf.get(best.from)! ? x : best));
    via = p.edge;
    cur = p.from;
  }
  // walk[k..] followed by `cur` again is the cycle, traversed backwards
  // (each step goes to a hook that must run earlier). Reverse it into run order.
  const k = seenAt.get(cur)!;
  const loop = walk.slice(k);
  const closing = via!;
  // In run order: loop[last].node -> ... -> loop[0].node -> (closing) -> loop[last].node
  const nodes = loop.map((w) => w.node).reverse();
  const edges = [...loop.slice(1).map((w) => w.edge!).reverse(), closing];
  // Rotate so the cycle starts at its smallest name.
  let s = 0;
  nodes.forEach((v, i) => { if (rankOf.get(v)! < rankOf.get(nodes[s]!)!) s = i; });
  const rot = <X>(xs: X[]) => [...xs.slice(s), ...xs.slice(0, s)];
  const cycle = rot(nodes);
  const why = rot(edges);
  const names = [...cycle, cycle[0]!].map((i) => hooks[i]!.name).join(' -> ');
  const decls = why.map((e) => `'${hooks[e.declaredBy]!.name}' has ${e.how}`).join(', ');
  return new PreStageError('InvalidHook',
    `ordering cycle between hooks: ${names} (each must run before the next: ${decls})` +
    `${describeSources(cycle.map((i) => hooks[i]!))}; remove one of these After=/Before= entries`);
}

function describeSources(hs: readonly Orderable[]): string {
  const known = hs.filter((h) => h.source);
  if (known.length === 0) return '';
  return `; files: ${known.map((h) => `${h.name}: ${h.source}`).join(', ')}`;
}

/** A binary min-heap of integers. */
class MinHeap {
  private readonly a: number[] = [];
  constructor(private readonly cmp: (x: number, y: number) => number) {}
  get size(): number {
    return this.a.length;
  }
  push(x: number): void {
    const a = this.a;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.cmp(a[i]!, a[p]!) >= 0) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): number {
    const a = this.a;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.cmp(a[l]!, a[m]!) < 0) m = l;
        if (r < a.length && this.cmp(a[r]!, a[m]!) < 0) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}
