// The break suite: proves that the tests guarding an invariant turn red when the invariant is broken.
//
//   npm run mutants                      every mutant in test/mutants/mutants.json
//   npm run mutants -- NAME [NAME ...]   only these
//   npm run mutants -- --check-clean     runs each mutant's test set once WITHOUT its patch (must pass)
//   npm run mutants -- --scratch         prints a scratch copy (a git repo) to write a new patch in
//   npm run mutants -- --check-patches   only checks that every patch still applies (seconds; CI runs
//                                        it before the tests, so a stale patch fails at once)
//   options: --jobs=1|2 (default 2), --keep (keep the scratch copies), --list
//
// Each entry of mutants.json: { name, rule (the invariant in words), patch (a file under
// test/mutants/, made with `git diff` in a scratch copy), tests (test file names), optional
// killedBy (substrings of test names: then only a failure of one of those counts as a kill),
// optional timeoutSeconds (default 240) }. Adding a mutant is one patch file plus one entry.
//
// Per mutant, one at a time (at most two at once): a scratch copy of the repository as it is on
// disk (tracked and untracked, not ignored, files; node_modules symlinked), `git apply` of the patch
// (a patch that no longer applies FAILS the suite: patches are kept in step with the code), then only
// the listed test files. Killed = some test red; survived = all green. The real tree is never
// touched. Exit status: 0 only when every mutant was killed and every patch applied.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const MUTANTS_DIR = join(ROOT, 'test', 'mutants');
const DEFAULT_TIMEOUT_S = 240;

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name, fallback) => {
  const hit = args.find((a) => a.startsWith(`${name}=`));
  return hit ? hit.slice(name.length + 1) : fallback;
};
const names = args.filter((a) => !a.startsWith('--'));
const jobs = Math.max(1, Math.min(2, Number(option('--jobs', '2')) || 2));
const keep = flag('--keep');

/** Running test processes (group ids), so Ctrl-C can stop them. */
const running = new Set();
const scratchDirs = new Set();
process.on('SIGINT', () => {
  for (const pgid of running) killGroup(pgid);
  if (!keep) for (const d of scratchDirs) rmSync(d, { recursive: true, force: true });
  process.exit(130);
});

function killGroup(pgid) {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function git(argv, cwd = ROOT) {
  const r = spawnSync('git', argv, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { ok: r.status === 0, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** A copy of the working tree as it is on disk (uncommitted changes included), as its own git repo. */
function makeScratch(label, { commit = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), `snapferry-mutant-${label.replace(/[^A-Za-z0-9_-]/g, '_')}-`));
  scratchDirs.add(dir);
  const listed = git(['ls-files', '-z', '--cached', '--others', '--exclude-standard']);
  if (!listed.ok) throw new Error(`git ls-files failed: ${listed.stderr}`);
  for (const rel of new Set(listed.stdout.split('\0').filter(Boolean))) {
    const src = join(ROOT, rel);
    let st;
    try {
      st = lstatSync(src);
    } catch {
      continue; // deleted in the working tree
    }
    if (!st.isFile() && !st.isSymbolicLink()) continue;
    mkdirSync(dirname(join(dir, rel)), { recursive: true });
    cpSync(src, join(dir, rel), { verbatimSymlinks: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  // Its own repository, so `git apply` patches exactly this directory (and `git diff` can make patches).
  git(['init', '-q'], dir);
  if (commit) {
    spawnSync('sh', ['-c', 'echo node_modules >> .git/info/exclude'], { cwd: dir });
    git(['add', '-A'], dir);
    git(['-c', 'user.name=mutants', '-c', 'user.email=mutants@localhost', 'commit', '-qm', 'scratch baseline'], dir);
  }
  return dir;
}

function dropScratch(dir) {
  scratchDirs.delete(dir);
  if (!keep) rmSync(dir, { recursive: true, force: true });
}

function loadMutants() {
  const file = join(MUTANTS_DIR, 'mutants.json');
  const all = JSON.parse(readFileSync(file, 'utf8'));
  if (!Array.isArray(all)) throw new Error(`${file}: expected an array of mutants`);
  const seen = new Set();
  for (const m of all) {
    for (const key of ['name', 'rule', 'patch']) if (typeof m[key] !== 'string' || m[key] === '') throw new Error(`${file}: a mutant without ${key}: ${JSON.stringify(m)}`);
    if (!Array.isArray(m.tests) || m.tests.length === 0) throw new Error(`${file}: mutant ${m.name} lists no tests`);
    if (seen.has(m.name)) throw new Error(`${file}: mutant ${m.name} is listed twice`);
    seen.add(m.name);
    m.tests = m.tests.map((t) => (t.startsWith('test/') ? t : `test/${t}`));
    for (const t of m.tests) if (!existsSync(join(ROOT, t))) throw new Error(`mutant ${m.name}: no test file ${t}`);
    if (!existsSync(join(MUTANTS_DIR, m.patch))) throw new Error(`mutant ${m.name}: no patch file test/mutants/${m.patch}`);
  }
  return all;
}

/** Runs test files in `dir`; resolves with the outcome and the names of the tests that failed. */
function runTests(dir, files, timeoutS, env = {}) {
  return new Promise((resolveRun) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=tap', `--test-timeout=${timeoutS * 1000}`, ...files],
      { cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
    );
    running.add(child.pid);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child.pid);
    }, timeoutS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      // Anything the tests left behind in their process group goes too.
      killGroup(child.pid);
      running.delete(child.pid);
      const failed = [];
      for (const line of out.split('\n')) {
        const m = /^(\s*)not ok \d+ - (.*?)(?:\s+#.*)?$/.exec(line);
        if (m && !/\.test\.ts$/.test(m[2])) failed.push(m[2]);
      }
      resolveRun({ green: code === 0 && !timedOut, code, signal, timedOut, failed, output: out });
    });
  });
}

function tail(text, lines = 40) {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

async function runMutant(m, checkClean) {
  const started = Date.now();
  const seconds = () => ((Date.now() - started) / 1000).toFixed(1);
  const dir = makeScratch(m.name);
  try {
    const patch = join(MUTANTS_DIR, m.patch);
    const check = git(['apply', '--check', patch], dir);
    if (!check.ok) {
      return { m, result: 'PATCH DOES NOT APPLY', bad: true, seconds: seconds(), detail: `git apply ${m.patch}:\n${check.stderr.trim()}\nRegenerate the patch against the current code (npm run mutants -- --scratch).` };
    }
    if (!checkClean) {
      const applied = git(['apply', patch], dir);
      if (!applied.ok) return { m, result: 'PATCH DOES NOT APPLY', bad: true, seconds: seconds(), detail: applied.stderr.trim() };
    }
    const run = await runTests(dir, m.tests, m.timeoutSeconds ?? DEFAULT_TIMEOUT_S, { SNAPFERRY_MUTANT: checkClean ? '' : m.name });
    if (checkClean) {
      if (run.green) return { m, result: 'clean: green', bad: false, seconds: seconds() };
      return { m, result: run.timedOut ? 'clean: TIMED OUT' : 'clean: RED', bad: true, seconds: seconds(), detail: `${run.failed.map((f) => `  not ok: ${f}`).join('\n')}\n${tail(run.output)}` };
    }
    if (run.green) return { m, result: 'SURVIVED', bad: true, seconds: seconds(), detail: `every test in ${m.tests.join(', ')} stayed green with the patch applied` };
    if (run.timedOut) return { m, result: 'killed (timeout)', bad: false, seconds: seconds(), detail: `the tests did not finish in ${m.timeoutSeconds ?? DEFAULT_TIMEOUT_S} s` };
    if (m.killedBy) {
      const by = run.failed.filter((f) => m.killedBy.some((k) => f.includes(k)));
      if (by.length === 0) {
        return { m, result: 'KILLED ELSEWHERE', bad: true, seconds: seconds(), detail: `none of the guards ${JSON.stringify(m.killedBy)} failed; red were:\n${run.failed.map((f) => `  ${f}`).join('\n') || tail(run.output)}` };
      }
      return { m, result: 'killed', bad: false, seconds: seconds(), failed: by };
    }
    return { m, result: 'killed', bad: false, seconds: seconds(), failed: run.failed, detail: run.failed.length ? undefined : tail(run.output, 15) };
  } finally {
    dropScratch(dir);
  }
}

async function pool(items, n, fn) {
  const results = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i]);
        const r = results[i];
        console.error(`mutants: ${r.m.name}: ${r.result} (${r.seconds} s)`);
      }
    }),
  );
  return results;
}

function printTable(rows) {
  const clip = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
  const table = [['mutant', 'rule', 'result', 'seconds'], ...rows.map((r) => [r.m.name, clip(r.m.rule, 80), r.result, r.seconds])];
  const widths = table[0].map((_, c) => Math.max(...table.map((row) => row[c].length)));
  const line = (row) => `| ${row.map((cell, c) => cell.padEnd(widths[c])).join(' | ')} |`;
  console.log(line(table[0]));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const row of table.slice(1)) console.log(line(row));
  for (const r of rows) {
    if (r.failed?.length) console.log(`\n${r.m.name}: red: ${r.failed.join('; ')}`);
    if (r.detail && (r.bad || !r.failed?.length)) console.log(`\n${r.m.name}: ${r.result}\n${r.detail}`);
  }
}

async function main() {
  if (flag('--scratch')) {
    const dir = makeScratch('scratch', { commit: true });
    scratchDirs.delete(dir);
    console.log(dir);
    console.error(`Edit files in ${dir}, then: (cd ${dir} && git diff) > test/mutants/NAME.patch, and add an entry to test/mutants/mutants.json.`);
    return 0;
  }
  const all = loadMutants();
  const unknown = names.filter((n) => !all.some((m) => m.name === n));
  if (unknown.length) {
    console.error(`mutants: unknown mutant(s): ${unknown.join(', ')} (known: ${all.map((m) => m.name).join(', ')})`);
    return 2;
  }
  const chosen = names.length ? all.filter((m) => names.includes(m.name)) : all;
  if (flag('--list')) {
    for (const m of chosen) console.log(`${m.name}\t${m.tests.join(',')}\t${m.rule}`);
    return 0;
  }
  if (flag('--check-patches')) {
    // --check writes nothing: checked against the tree itself.
    const stale = chosen.filter((m) => !git(['apply', '--check', join(MUTANTS_DIR, m.patch)]).ok);
    for (const m of stale) console.error(`mutants: ${m.patch} no longer applies: regenerate it against the current code (npm run mutants -- --scratch)`);
    console.log(`${chosen.length - stale.length}/${chosen.length} mutant patches apply`);
    return stale.length ? 1 : 0;
  }
  const checkClean = flag('--check-clean');
  const started = Date.now();
  // Unpatched, mutants with the same test set would run the same thing: once per set is enough.
  const cleanRuns = new Map();
  const rows = await pool(chosen, jobs, (m) => {
    if (!checkClean) return runMutant(m, false);
    const key = [...m.tests].sort().join(' ');
    if (!cleanRuns.has(key)) cleanRuns.set(key, runMutant(m, true));
    return cleanRuns.get(key).then((r) => {
      if (r.m === m) return r;
      // Its patch must still apply (checked against the tree itself: --check writes nothing).
      const check = git(['apply', '--check', join(MUTANTS_DIR, m.patch)]);
      if (!check.ok) return { m, result: 'PATCH DOES NOT APPLY', bad: true, seconds: '0.0', detail: `git apply ${m.patch}:\n${check.stderr.trim()}` };
      return { ...r, m, seconds: `(as ${r.m.name})` };
    });
  });
  printTable(rows);
  const bad = rows.filter((r) => r.bad);
  const total = ((Date.now() - started) / 1000).toFixed(1);
  if (checkClean) {
    console.log(`\n${rows.length - bad.length}/${rows.length} test sets green without their patch (${total} s)`);
  } else {
    const survived = rows.filter((r) => r.result === 'SURVIVED' || r.result === 'KILLED ELSEWHERE').length;
    const unapplied = rows.filter((r) => r.result === 'PATCH DOES NOT APPLY').length;
    console.log(`\n${rows.length - bad.length}/${rows.length} mutants killed; ${survived} survived; ${unapplied} patch(es) do not apply (${total} s)`);
  }
  return bad.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`mutants: ${err.stack ?? err}`);
    for (const pgid of running) killGroup(pgid);
    process.exit(2);
  },
);
