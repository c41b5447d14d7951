/**
 * A hook program that records each run, so "no hook ran" is checkable on
 * disk: it appends one line, `HOOK PHASE ARGS...` (`HOOK PHASE` without
 * arguments), to the file named by the step's `RECORD` variable, and exits 0.
 *
 * `makeRecorder(dir)` installs it as `<dir>/bin/record` (root-owned, 0755,
 * so hook trust accepts it) with the record file in `<dir>/record/`, a
 * directory of its own that state snapshots can watch.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

export const RECORD_PROGRAM = `#!/bin/sh
echo "$BOOTC_PRESTAGE_HOOK $BOOTC_PRESTAGE_PHASE\${*:+ $*}" >> "$RECORD"
exit 0
`;

export interface Recorder {
  /** The record program, `<dir>/bin/record`. */
  program: string;
  /** `<dir>/record`: holds only the record file. */
  recordDir: string;
  /** The file every run appends to (absent until the first run). */
  recordFile: string;
  /**
   * A hook file whose Prepare, Commit and Abort each run the program with
   * `arg` (none when undefined), recording into `recordFile`; `extra` lines
   * (e.g. `Required=no`, `After=x`) are added to the [Hook] section.
   */
  hookText(arg?: string, extra?: string[]): string;
  /** The recorded lines, oldest first; [] when nothing ran. */
  recorded(): Promise<string[]>;
  /** The record file's text exactly; '' when nothing ran. */
  recordText(): Promise<string>;
}

/** Install the record program in `dir` (which must exist). */
export async function makeRecorder(dir: string): Promise<Recorder> {
  const programPath = path.join(dir, 'bin', 'record');
  const recordDir = path.join(dir, 'record');
  const recordFile = path.join(recordDir, 'runs');
  await fsp.mkdir(path.dirname(programPath), { recursive: true, mode: 0o755 });
  await fsp.mkdir(recordDir, { mode: 0o755 });
  await writeRecordProgram(programPath);
  const recordText = () => fsp.readFile(recordFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return '';
    throw e;
  });
  return {
    program: programPath,
    recordDir,
    recordFile,
    hookText(arg, extra = []) {
      const cmd = arg === undefined ? programPath : `${programPath} ${arg}`;
      return ['[Hook]', `Prepare=${cmd}`, `Commit=${cmd}`, `Abort=${cmd}`, `Environment=RECORD=${recordFile}`,
        ...extra, ''].join('\n');
    },
    recordText,
    async recorded() {
      return (await recordText()).split('\n').filter(Boolean);
    },
  };
}

/** Write the record program at `file` with mode 0755 (whatever the umask). */
export async function writeRecordProgram(file: string): Promise<void> {
  await fsp.writeFile(file, RECORD_PROGRAM, { mode: 0o755 });
  await fsp.chmod(file, 0o755);
}
