// The dashboard in real headless Chromium against a real `flare serve`:
// - the page loads with no console errors;
// - the immunization bars and the alerts feed change as the generator writes;
// - after the server (and so its WebSocket) is killed and restarted on the same data, the page
//   reconnects and the totals it shows equal the totals of the HTTP API (no double counting);
// - a screenshot is saved as an artifact.
//
// Usage: FLARE_BIN=target/debug/flare node tests/dashboard/dashboard.mjs [screenshot.png]

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const flare = process.env.FLARE_BIN ?? "target/debug/flare";
const screenshot = process.argv[2] ?? "target/dashboard.png";
const dataDir = mkdtempSync(join(tmpdir(), "flare-dashboard-"));

const freePort = () =>
  new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await sleep(250);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

function startServer(port) {
  const child = spawn(flare, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, FLARE_LOG_LEVEL: "warn" },
  });
  child.stderr.on("data", (chunk) => process.stderr.write(chunk));
  return child;
}

async function stopServer(child) {
  child.kill("SIGTERM");
  await new Promise((resolve) => child.once("exit", resolve));
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
let server = startServer(port);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  await waitFor("the server", async () => (await fetch(`${base}/health`)).ok);
  const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const consoleErrors = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  await page.goto(`${base}/`);
  await waitFor("the live connection", async () => (await page.textContent("#connection")) === "live");

  // Bars and alerts change as the generator writes.
  assert.equal(await page.locator("#vaccines g.bar").count(), 0);
  const generated = spawnSync(
    flare,
    ["generate", "--patients", "40", "--sepsis-share", "0.6", "--url", `${base}/fhir`],
    { encoding: "utf8" },
  );
  assert.equal(generated.status, 0, generated.stderr);
  await waitFor("immunization bars", async () => (await page.locator("#vaccines g.bar").count()) > 3);
  await waitFor("sepsis alerts", async () => (await page.locator("#alerts li.alert").count()) > 0, 120_000);

  const shownTotals = async () =>
    Object.fromEntries(
      await page.$$eval("#vaccines g.bar", (bars) => bars.map((bar) => [bar.dataset.code, Number(bar.dataset.count)])),
    );
  const apiTotals = async () => {
    const stats = await (await fetch(`${base}/api/stats/immunizations?from=1900-01-01`)).json();
    const top = [...stats.totals].sort((a, b) => b.count - a.count || a.vaccine.localeCompare(b.vaccine)).slice(0, 12);
    return Object.fromEntries(top.map((t) => [t.vaccine, t.count]));
  };
  // The processors settle; then the page must show exactly what the API says.
  await waitFor("the page to match the API", async () => {
    const [shown, api] = [await shownTotals(), await apiTotals()];
    return JSON.stringify(shown) === JSON.stringify(api) && Object.keys(api).length > 3;
  });
  const before = await apiTotals();

  // Kill the server: the socket drops, the page shows it is reconnecting, then resumes.
  await stopServer(server);
  await waitFor("the page to notice", async () => (await page.textContent("#connection")) !== "live");
  server = startServer(port);
  await waitFor("the reconnect", async () => (await page.textContent("#connection")) === "live", 60_000);
  await waitFor("the same totals after the restart", async () => {
    const [shown, api] = [await shownTotals(), await apiTotals()];
    return JSON.stringify(shown) === JSON.stringify(api);
  });
  assert.deepEqual(await apiTotals(), before, "a restart must not change the counts");
  // The alert links to the patient view with charted vitals.
  await page.click("#alerts li.alert a.patient");
  await waitFor("the patient's vitals", async () => (await page.locator("#patient-view figure.vital circle").count()) > 0);
  await page.goto(`${base}/`);
  await waitFor("the dashboard again", async () => (await page.locator("#vaccines g.bar").count()) > 3);
  await page.screenshot({ path: screenshot, fullPage: true });
  // A reconnecting WebSocket logs a failed connection in Chromium; nothing else may.
  const unexpected = consoleErrors.filter((text) => !/WebSocket connection .* failed/.test(text) && !/ERR_CONNECTION_REFUSED/.test(text));
  assert.deepEqual(unexpected, [], "console errors");
  console.log(`dashboard test passed; screenshot in ${screenshot}`);
} finally {
  await browser.close();
  await stopServer(server).catch(() => {});
  rmSync(dataDir, { recursive: true, force: true });
}
