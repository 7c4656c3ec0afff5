// Builds dist/: index.js, CommonJS, for require() (a mini-program's 构建 npm copies dist/, the
// package's `miniprogram` directory, and requires its index.js), and liaotian-client.min.js, one
// minified ES module, whose size is what a mini-program package pays. Prints that size. The SDK
// itself is the plain ES modules in src/, which browsers and Node import as they are.
import { build } from 'esbuild';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const common = { legalComments: 'none', entryPoints: ['src/index.js'], bundle: true, target: 'es2018', logLevel: 'warning' };
await build({ ...common, format: 'cjs', outfile: 'dist/index.js' });
await build({ ...common, format: 'esm', minify: true, outfile: 'dist/liaotian-client.min.js' });
// The package is `"type": "module"`; dist/ holds CommonJS.
writeFileSync('dist/package.json', '{ "type": "commonjs" }\n');
const min = statSync('dist/liaotian-client.min.js').size;
const gz = gzipSync(readFileSync('dist/liaotian-client.min.js')).length;
console.log(`liaotian-client: ${min} bytes minified, ${gz} gzipped`);
