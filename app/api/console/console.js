// The console's entry point: wires the panels and keeps them current while the page is open.

import { call } from "./api.js";
import { onKeysChanged, setUpDialogs } from "./dialogs.js";
import { byId, fill, h } from "./dom.js";
import { Latency } from "./latency.js";
import { ModelList } from "./models.js";
import { TryIt } from "./tryit.js";
import { Upload } from "./upload.js";

const MODELS_EVERY_MS = 10000;
const MODELS_BUSY_EVERY_MS = 1500; // while a model loads or an upload runs: live states
// ?refresh=N reads /metrics every N seconds (at least 1) instead of every 5.
const LATENCY_EVERY_MS = 1000 * Math.max(
  1, Number(new URLSearchParams(location.search).get("refresh")) || 5);

let uploading = false;
let modelsTimer = 0;
let tryIt;
let upload;
let latency;

const models = new ModelList(() => {
  tryIt.update();
  upload.showManagement();
  latency.render();
});
tryIt = new TryIt(models);
upload = new Upload(models, (busy) => {
  uploading = busy;
  if (busy) scheduleModels(MODELS_BUSY_EVERY_MS);
});
latency = new Latency(models);

function scheduleModels(delay) {
  clearTimeout(modelsTimer);
  modelsTimer = setTimeout(async () => {
    await models.refresh();
    scheduleModels(uploading || models.loading() ? MODELS_BUSY_EVERY_MS : MODELS_EVERY_MS);
  }, delay);
}

async function showServer() {
  const line = byId("server");
  try {
    const server = await call("v2");
    let ready = "ready";
    try {
      await call("v2/health/ready");
    } catch (err) {
      ready = `not ready: ${err.message}`;
    }
    fill(line, h("strong", {}, server.name), ` ${server.version}, ${ready}`);
  } catch (err) {
    fill(line, `The server does not answer: ${err.message}`);
  }
}

async function readLatency() {
  await latency.read();
  setTimeout(readLatency, LATENCY_EVERY_MS);
}

function start() {
  setUpDialogs();
  upload.setUp();
  tryIt.setUp();
  byId("models-refresh").addEventListener("click", () => models.refresh());
  onKeysChanged(() => models.refresh());
  showServer();
  models.refresh().then(() => scheduleModels(MODELS_EVERY_MS));
  readLatency();
}

start();
