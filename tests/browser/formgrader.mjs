// Clicks formgrader's autograde (lightning) button for some students, as an instructor does
// in JupyterLab 4, and prints what the page showed as JSON on stdout (tests/e2e/test_browser.py
// runs it and asserts on it).
//
//   node tests/browser/formgrader.mjs '{"url": "http://127.0.0.1:8888", "token": "...",
//       "assignment": "ps1", "students": ["alice", "probe"], "view": ["probe"],
//       "feedback": ["alice"], "notebook": "problem1", "screenshots": "target/browser", "timeout_ms": 60000,
//       "deadline_ms": 120000}'
//
// The way in is the lab UI, not formgrader's page opened by itself: /lab, the "Nbgrader"
// menu, "Formgrader" (which opens formgrader in an iframe in the main area), then the
// assignment's submission count to its "Manage Submissions" page. That is the path an
// instructor takes, and it also proves the lab extension and the server extension agree.
// For each student: the lightning button of their row, the modal that answers it (title
// and whole text, log and traceback included), a screenshot, OK, then the row once the page
// has fetched it again (status and score). Then, for each student in `feedback`, the same with
// the row's "Generate Feedback" (speech bubble) button. For each student in `view`: formgrader's view of
// their `notebook` (their name in the submissions table, then the notebook's name), whose
// text is the graded notebook with its outputs. The views come after every autograde, as
// they leave the submissions page (the way back is the sidebar, which the notebook view
// doesn't have: one view per run).
//
// The browser is Debian's /usr/bin/chromium (scripts/browser.sh), headless, with
// --no-sandbox because the tests run as root (Chromium refuses its own sandbox as root).
// Nothing is downloaded. Screenshots: <screenshots>/<student>-modal.png for every modal,
// <student>-failure.png (or start-failure.png) whenever a step fails.
//
// Output: {"ok": bool, "error": str|null, "screenshot": str|null, "seconds": {...},
//          "students": {name: {"modal_title", "modal_text", "row_text", "score_text",
//                              "screenshot", "error", "seconds"}},
//          "feedback": {name: (the same, for the feedback button)},
//          "views": {name: {"text", "screenshot", "error"}}}
// Exit status 0 when the steps ran (whatever the page said), 1 when one could not run.

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const opts = JSON.parse(process.argv[2] ?? "{}");
const t0 = Date.now();
// each autograde may take timeout_ms; the whole run stops at deadline_ms (from its start), and
// still reports what it saw, so the caller's own time limit is never the one that fires
const deadline = t0 + (opts.deadline_ms ?? 120000);
const waitMs = () => {
  const left = deadline - Date.now();
  if (left <= 0) throw new Error(`not tried: the run's deadline (${opts.deadline_ms} ms) had passed`);
  return Math.min(opts.timeout_ms ?? 60000, left);
};
fs.mkdirSync(opts.screenshots, { recursive: true });
const shot = (name) => path.resolve(opts.screenshots, `${name}.png`);
const since = (t0) => Math.round((Date.now() - t0) / 100) / 10;

// the first lines of a playwright error: what failed, and what it was waiting for
const why = (e) =>
  String(e?.message ?? e)
    .replace(/\x1b\[[0-9;]*m/g, "")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && l !== "Call log:")
    .slice(0, 3)
    .join(" | ");

const out = { ok: false, error: null, screenshot: null, seconds: {}, students: {}, feedback: {}, views: {} };
let browser = null;
let page = null;
let fg = null;

async function failShot(name) {
  if (!page) return null;
  try {
    await page.screenshot({ path: shot(name), fullPage: true });
    return shot(name);
  } catch {
    return null;
  }
}

async function openSubmissions() {
  await page.goto(`${opts.url}/lab?token=${encodeURIComponent(opts.token)}`);
  await page.locator("#jp-main-dock-panel").waitFor({ timeout: waitMs() });
  await page.getByRole("menuitem", { name: "Nbgrader", exact: true }).click();
  await page.getByRole("menuitem", { name: "Formgrader", exact: true }).click();
  await manageSubmissions();
}

async function manageSubmissions() { // from any formgrader page: its sidebar, then the assignment
  await fg.locator(".nav a", { hasText: "Manage Assignments" }).click();
  const row = fg.locator("tr", { has: fg.locator("td.name", { hasText: new RegExp(`^${opts.assignment}$`) }) });
  await row.locator("td.num-submissions a").click();
  await fg.locator("td.student-id").first().waitFor();
}

const rowOf = (student) =>
  fg.locator("tr", { has: fg.locator("td.student-id", { hasText: new RegExp(`^${student}$`) }) });

// a button of a student's row (`column`: the cell's class, "autograde" or "generate-feedback"),
// the modal that answers it, then the row as the page fetches it again
async function clickRow(student, column, name) {
  const r = { modal_title: null, modal_text: null, row_text: null, score_text: null, screenshot: null, error: null };
  const t = Date.now();
  try {
    const row = rowOf(student);
    await row.locator(`td.${column} a`).click({ timeout: waitMs() });
    // the handler answers when nbgrader is done; the page then shows a modal
    const modal = fg.locator("#success-modal, #error-modal");
    await modal.waitFor({ state: "visible", timeout: waitMs() });
    // Bootstrap fades it in (class "in", then a 0.3 s transition): the screenshot waits for it
    await fg.locator("#success-modal.in, #error-modal.in").waitFor();
    await page.waitForTimeout(500);
    r.modal_title = (await modal.locator(".modal-title").innerText()).trim();
    r.modal_text = (await modal.locator(".modal-body").innerText()).trim();
    await page.screenshot({ path: shot(`${name}-modal`) });
    r.screenshot = shot(`${name}-modal`);
    await modal.locator(".modal-footer button").click();
    await modal.waitFor({ state: "detached" });
    // the row is fetched again after the answer: wait until it shows a status again
    await row.locator("td.status span").waitFor();
    r.row_text = (await row.innerText()).replace(/\s+/g, " ").trim();
    r.score_text = (await row.locator("td.score").innerText()).trim();
  } catch (e) {
    r.error = why(e);
    r.screenshot = await failShot(`${name}-failure`);
    // a modal left open would cover the next row
    await page.keyboard.press("Escape").catch(() => {});
  }
  r.seconds = since(t);
  return r;
}

async function view(student) {
  const r = { text: null, screenshot: null, error: null };
  try {
    waitMs();
    await manageSubmissions();
    // an autograded student's name links to their submission of the assignment, whose
    // notebooks link to formgrader's view of each (the graded notebook, outputs included)
    await rowOf(student).locator("td.student-name a").click();
    await fg.locator("td.name a", { hasText: new RegExp(`^${opts.notebook}$`) }).click();
    const body = fg.locator("#notebook-container, body").first();
    await fg.locator(".output_area, .jp-OutputArea").first().waitFor();
    r.text = (await body.innerText()).trim();
    await page.screenshot({ path: shot(`${student}-view`) });
    r.screenshot = shot(`${student}-view`);
  } catch (e) {
    r.error = why(e);
    r.screenshot = await failShot(`${student}-view-failure`);
  }
  return r;
}

try {
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox"],
    headless: true,
    timeout: waitMs(),
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(30000);
  // formgrader inside the lab: the widget's node has this id, the iframe is inside it
  fg = page.frameLocator("#formgrader-iframe iframe");
  await openSubmissions();
  out.seconds.open = since(t0);
  for (const student of opts.students) out.students[student] = await clickRow(student, "autograde", student);
  // then formgrader's "Generate Feedback" (speech bubble) button of each student in `feedback`
  for (const student of opts.feedback ?? [])
    out.feedback[student] = await clickRow(student, "generate-feedback", `${student}-feedback`);
  for (const student of opts.view ?? []) out.views[student] = await view(student);
  out.ok = true;
} catch (e) {
  out.error = why(e);
  out.screenshot = await failShot("start-failure");
} finally {
  out.seconds.total = since(t0);
  await browser?.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.ok ? 0 : 1);
