#!/usr/bin/env node
import { main } from './main.js';

// A reader that goes away (`lading consume ... | head`) is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

const code = await main(process.argv);
process.exitCode = code;
// Nothing should keep the process alive after the command is done; if something does, do not hang.
setTimeout(() => process.exit(code), 3000).unref();
