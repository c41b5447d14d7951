/** step-runner.test.ts with steps started by the fork() variant of the helper (test/helpers/spawner-variant.ts). */
import { useForkVariantOfSpawner } from '../helpers/spawner-variant.js';

useForkVariantOfSpawner();
await import('./step-runner.test.js');
