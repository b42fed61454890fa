// Drives the devnet's live map in headless Chromium (playwright-core): the page loads
// and shows every node, then a sever made with `por devnet sever` shows within
// seconds. Prints one JSON line of what it saw; screenshots go where it is told.
//
// node map.mjs <url> <por> <devnet dir> <hosts> <screenshot before> <screenshot after>
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const [url, por, dir, hosts, before, after] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const loadStarted = Date.now();
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 20000 });
  await page.waitForFunction(
    (n) => document.querySelectorAll("g[data-node]").length === n,
    Number(hosts), { timeout: 20000 });
  const loadMs = Date.now() - loadStarted;
  const names = await page.$$eval("g[data-node]", (els) => els.map((e) => e.dataset.name));
  const centers = await page.$$eval("g.node.center", (els) => els.length);
  const severedBefore = await page.$$eval('line[data-severed="true"]', (els) => els.length);
  await page.screenshot({ path: before });

  const severAt = Date.now();
  const out = JSON.parse(execFileSync(por, ["devnet", "sever", "h01", "h02", "--dir", dir]).toString());
  await page.waitForSelector(`line[data-channel="${out.severed}"][data-severed="true"]`, { timeout: 15000 });
  const shownMs = Date.now() - severAt;
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("severed"), null, { timeout: 5000 });
  const log = await page.textContent("#log");
  const row = await page.textContent(`tr[data-row-channel="${out.severed}"]`);
  await page.screenshot({ path: after });
  console.log(JSON.stringify({ names, centers, severedBefore, channel: out.severed, loadMs, shownMs, log, row, errors }));
} finally {
  await browser.close();
}
