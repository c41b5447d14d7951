/**
 * The step runner's tests again, with the spawn helper disabled: the path
 * a machine without the helper (not built: no C compiler) takes, and the
 * one every step falls back to when the helper cannot be used. Each ava
 * test file runs in its own process, so the setting stays in this one.
 */
process.env.BOOTC_PRESTAGE_SPAWNER = '';
await import('./step-runner.test.js');
