/** spawner.test.ts against the fork() variant of the helper (test/helpers/spawner-variant.ts). */
import { useForkVariantOfSpawner } from '../helpers/spawner-variant.js';

useForkVariantOfSpawner();
await import('./spawner.test.js');
