'use strict';
// The `require` entry of tunnel-rpc, an ES module. Node 20.19+ and 22.12+ load ES modules with
// require() (require(esm)), so this hands back the very module `import` gets: one copy, one set of
// classes. Where Node cannot (an older Node, or --no-experimental-require-module), the error says
// what to write instead of Node's ERR_REQUIRE_ESM.
try {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- the require entry is CommonJS by definition
  module.exports = require('../dist/src/index.js');
} catch (err) {
  if (err && err.code === 'ERR_REQUIRE_ESM') {
    throw new Error("tunnel-rpc is an ES module: use import, or await import('tunnel-rpc') from CommonJS (Node 20.19+ and 22.12+ can also require() it)", {
      cause: err,
    });
  }
  throw err;
}
