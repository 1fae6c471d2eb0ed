#!/usr/bin/env node
// Shim: the CLI is built to dist/ by `npm run setup` (tsc). src/cli/main.ts owns exit codes and errors.
import { main } from '../dist/cli/main.js';

await main();
