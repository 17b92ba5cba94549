// The FHIRcast sandbox page in real headless Chromium against a real `flare serve` with its
// default configuration (the hub is on by default):
// - the CapabilityStatement names the hub, and the page is served at {hub.url}/sandbox and
//   reads the hub's .well-known configuration;
// - the page subscribes over the WebSocket channel and shows the confirmation;
// - Patient-open published from the page's form arrives in the log panel, is acknowledged,
//   and is the current context; Patient-close arrives too and empties the context;
// - an event published by another client (fetch from Node) arrives in the log as well;
// - no console errors; a screenshot is saved as an artifact.
//
// Usage: FLARE_BIN=target/debug/flare node tests/fhircast-sandbox/sandbox.mjs [screenshot.png]

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const flare = process.env.FLARE_BIN ?? "target/debug/flare";
const screenshot = process.argv[2] ?? "target/fhircast-sandbox.png";
const dataDir = mkdtempSync(join(tmpdir(), "flare-fhircast-sandbox-"));
const FHIRCAST_EXTENSION = "http://fhircast.hl7.org/StructureDefinition/fhircast-configuration-extension";

const freePort = () =>
  new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = spawn(flare, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
  stdio: ["ignore", "ignore", "pipe"],
  env: { ...process.env, FLARE_LOG_LEVEL: "warn" },
});
server.stderr.on("data", (chunk) => process.stderr.write(chunk));
const exited = new Promise((resolve) => server.once("exit", resolve));

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  await waitFor("the server", async () => (await fetch(`${base}/health`)).ok);

  // Discovery: the hub.url comes from the CapabilityStatement, as an integrator finds it.
  const metadata = await (await fetch(`${base}/fhir/metadata`, { headers: { accept: "application/fhir+json" } })).json();
  const extension = metadata.rest
    .find((rest) => rest.mode === "server")
    .extension?.find((e) => e.url === FHIRCAST_EXTENSION);
  assert.ok(extension, "the CapabilityStatement carries the FHIRcast extension");
  const hubUrl = extension.extension.find((e) => e.url === "hub.url").valueUrl;
  assert.equal(hubUrl, `${base}/fhircast`);

  const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const consoleErrors = [];
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  await page.goto(`${hubUrl}/sandbox`);
  assert.equal(await page.inputValue("#hub"), hubUrl, "the page defaults to the hub that serves it");
  await page.click("#discover");
  await waitFor("the hub's configuration", async () => (await page.textContent("#configuration")).includes('"fhircastVersion": "3.0.0"'));

  const topic = `sandbox-test-${Date.now()}`;
  await page.fill("#topic", topic);
  await page.click("#subscribe");
  await waitFor("the subscription", async () => (await page.getAttribute("#status", "data-state")) === "connected");
  assert.equal(await page.locator('#log li[data-direction="in"][data-mode="subscribe"]').count(), 1, "the confirmation is logged");

  // Patient-open from the page's form arrives over the socket and lands in the log.
  await page.selectOption("#event", "Patient-open");
  await page.fill("#patient-id", "pat-sandbox-7");
  await page.dispatchEvent("#patient-id", "input");
  await page.click("#publish");
  await waitFor("the publish answer", async () => (await page.textContent("#publish-result")).includes("202"));
  const opened = page.locator('#log li[data-direction="in"][data-event="Patient-open"]');
  await waitFor("Patient-open in the log", async () => (await opened.count()) === 1);
  const openedFrame = JSON.parse(await opened.locator(".body").textContent());
  assert.equal(openedFrame.event["hub.topic"], topic);
  assert.equal(openedFrame.event.context[0].resource.id, "pat-sandbox-7");
  // The page acknowledged it (so the hub raises no SyncError for a missing ack).
  await waitFor("the acknowledgement", async () => (await page.locator('#log li[data-direction="out"]', { hasText: `ack 200 for ${openedFrame.id}` }).count()) === 1);

  await page.click("#get-context");
  await waitFor("the current context", async () => (await page.textContent("#current-context")).includes("pat-sandbox-7"));
  assert.match(await page.textContent("#current-context"), /^HTTP 200/);

  // An event from another client reaches the page too.
  const fromElsewhere = await fetch(hubUrl, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      timestamp: new Date().toISOString(),
      id: "from-node-1",
      event: { "hub.topic": topic, "hub.event": "Patient-close", context: [{ key: "patient", resource: { resourceType: "Patient", id: "pat-sandbox-7" } }] },
    }),
  });
  assert.equal(fromElsewhere.status, 202);
  const closed = page.locator('#log li[data-direction="in"][data-event="Patient-close"]');
  await waitFor("Patient-close in the log", async () => (await closed.count()) === 1);
  assert.equal(JSON.parse(await closed.locator(".body").textContent()).id, "from-node-1", "the hub reuses the publisher's id");

  await page.click("#get-context");
  await waitFor("the emptied context", async () => !(await page.textContent("#current-context")).includes("pat-sandbox-7"));

  await page.screenshot({ path: screenshot, fullPage: true });
  assert.deepEqual(consoleErrors, [], "console errors");
  console.log(`FHIRcast sandbox test passed; screenshot in ${screenshot}`);
} finally {
  await browser.close();
  server.kill("SIGTERM");
  await exited;
  rmSync(dataDir, { recursive: true, force: true });
}
