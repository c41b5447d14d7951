/**
 * README.md's two commands are the whole set-up of a fresh machine, and CI
 * runs exactly the second one: `.ci/run` holds that command and nothing else
 * but comments, `set -euo pipefail` and a `cd` to the checkout.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const repo = join(import.meta.dirname, '..', '..');

/** The commands of the first fenced block after "## The two commands", comments stripped. */
function readmeCommands(markdown: string): string[] {
  const section = markdown.split(/^## The two commands$/m)[1];
  if (section === undefined) throw new Error('README.md has no "## The two commands" section');
  const block = /^```sh\n([\s\S]*?)^```$/m.exec(section);
  if (!block) throw new Error('"## The two commands" has no ```sh block');
  return block[1]!.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).filter((l) => l !== '');
}

/** The lines of a shell script that do something, other than set -euo pipefail and cd. */
function scriptCommands(script: string): string[] {
  return script.split('\n').map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .filter((l) => l !== 'set -euo pipefail' && !/^cd\s/.test(l));
}

test('README - the two commands are the demo and the test command, both through scripts/setup', (t) => {
  const cmds = readmeCommands(readFileSync(join(repo, 'README.md'), 'utf8'));
  t.deepEqual(cmds, ['scripts/setup demo && npm start', 'scripts/setup test && npm test']);
});

test('.ci/run - runs exactly the README\'s test command', (t) => {
  const cmds = readmeCommands(readFileSync(join(repo, 'README.md'), 'utf8'));
  const testCommand = cmds.find((c) => /\bnpm test\b/.test(c));
  t.truthy(testCommand, `a command running npm test in ${JSON.stringify(cmds)}`);
  const ci = readFileSync(join(repo, '.ci', 'run'), 'utf8');
  t.true(ci.startsWith('#!/usr/bin/env bash\n'));
  t.regex(ci, /^set -euo pipefail$/m);
  t.deepEqual(scriptCommands(ci), [testCommand!]);
});

test('scriptCommands - sees any extra command in a script', (t) => {
  t.deepEqual(scriptCommands('#!/bin/sh\n# c\nset -euo pipefail\ncd "$x"\n\napt-get update\nnpm test\n'),
    ['apt-get update', 'npm test']);
});

test('scripts/setup - demo and test are its purposes; anything else is a usage error naming it', (t) => {
  const setup = join(repo, 'scripts', 'setup');
  const help = spawnSync(setup, ['--help'], { encoding: 'utf8' });
  t.is(help.status, 0, help.stderr);
  t.regex(help.stdout, /^ {2}demo /m);
  t.regex(help.stdout, /^ {2}test /m);
  t.regex(help.stdout, /root/);
  const none = spawnSync(setup, [], { encoding: 'utf8' });
  t.is(none.status, 2);
  t.regex(none.stderr, /^Usage: scripts\/setup PURPOSE/m);
  const bad = spawnSync(setup, ['demo', 'bogus'], { encoding: 'utf8' });
  t.is(bad.status, 2);
  t.regex(bad.stderr, /unknown purpose 'bogus'/);
});

test('scripts/setup - every package row names its purposes, a Debian and a Fedora name, and what it is for', (t) => {
  const text = readFileSync(join(repo, 'scripts', 'setup'), 'utf8');
  const table = /^PACKAGES='\n([\s\S]*?)^'$/m.exec(text);
  t.truthy(table, 'the PACKAGES table');
  const rows = table![1]!.split('\n').filter((l) => l.trim() !== '').map((l) => l.trim().split(/\s+/));
  const debian = rows.map((r) => r[1]);
  for (const r of rows) {
    t.true(r.length >= 4, `purposes, Debian, Fedora, why: ${r.join(' ')}`);
    t.regex(r[0]!, /^(demo,test|test)$/, `test needs all of demo's packages: ${r.join(' ')}`);
  }
  t.is(new Set(debian).size, debian.length, 'no package twice');
  // What the test suite and the other helpers' tests rely on.
  for (const p of ['dbus-daemon', 'dbus-bin', 'systemd', 'ostree', 'e2fsprogs', 'podman', 'skopeo', 'util-linux',
    'debianutils', 'procps', 'tmux', 'python3', 'cockpit-ws', 'cockpit-bridge', 'chromium', 'fonts-dejavu-core',
    'rpm', 'gcc', 'libc6-dev', 'bubblewrap', 'busybox-static', 'docker-registry', 'polkitd', 'pkexec',
    'mmdebstrap', 'systemd-container', 'libxml2-utils', 'python3-jsonschema']) {
    t.true(debian.includes(p), `${p} is installed for the tests`);
  }
});
