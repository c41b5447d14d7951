/**
 * Validity of D-Bus names and object paths, as the specification defines
 * them (dbus-daemon drops a connection that sends an invalid one).
 */
import { MAX_NAME_BYTES } from './marshal-error.js';

/** `[A-Za-z_][A-Za-z0-9_]*`, as member names and name elements need. */
function isElementChar(c: number, first: boolean): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f || (!first && c >= 0x30 && c <= 0x39);
}

/** An object path: `/`, or `/`-separated non-empty `[A-Za-z0-9_]` elements. */
export function isValidObjectPath(p: string): boolean {
  const n = p.length;
  if (n === 0 || p.charCodeAt(0) !== 0x2f) return false;
  if (n === 1) return true;
  let prevSlash = true;
  for (let i = 1; i < n; i++) {
    const c = p.charCodeAt(i);
    if (c === 0x2f) {
      if (prevSlash) return false;
      prevSlash = true;
    } else if ((c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f) {
      prevSlash = false;
    } else {
      return false;
    }
  }
  return !prevSlash;
}

/** An interface or error name: two or more `.`-separated elements. */
export function isValidInterfaceName(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > MAX_NAME_BYTES) return false;
  let elements = 1;
  let first = true;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2e) {
      if (first) return false;
      elements++;
      first = true;
    } else if (isElementChar(c, first)) {
      first = false;
    } else {
      return false;
    }
  }
  return !first && elements >= 2;
}

export function isValidMemberName(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > MAX_NAME_BYTES) return false;
  for (let i = 0; i < n; i++) if (!isElementChar(s.charCodeAt(i), i === 0)) return false;
  return true;
}

/** A unique (`:1.42`) or well-known (`org.example.Name`) bus name. */
export function isValidBusName(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > MAX_NAME_BYTES) return false;
  const unique = s.charCodeAt(0) === 0x3a;
  let elements = 1;
  let first = true;
  for (let i = unique ? 1 : 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2e) {
      if (first) return false;
      elements++;
      first = true;
    } else if (isElementChar(c, first && !unique) || c === 0x2d) {
      first = false;
    } else {
      return false;
    }
  }
  return !first && elements >= 2;
}
