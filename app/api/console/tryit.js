// The "Try it" panel: an image to POST /predict (top-k labels as bars), or a v2 JSON request,
// prefilled from the model's metadata, to POST /v2/models/{m}/versions/{v}/infer.

import { ApiError, call, segment } from "./api.js";
import { askKeys } from "./dialogs.js";
import { byId, duration, errorBox, fill, h, dropTarget, setInputFile } from "./dom.js";

const ZERO = { BOOL: false, BYTES: "" };

/** A valid v2 request for ``metadata``'s inputs: zeros, any-size dimensions set to 1. */
export function exampleRequest(metadata) {
  const inputs = metadata.inputs.map((spec) => {
    const shape = spec.shape.map((d) => (d < 0 ? 1 : d));
    const count = shape.reduce((a, b) => a * b, 1);
    const zero = spec.datatype in ZERO ? ZERO[spec.datatype] : 0;
    return { name: spec.name, shape, datatype: spec.datatype, data: new Array(count).fill(zero) };
  });
  return `{"inputs": [\n${inputs.map((i) => `  ${JSON.stringify(i)}`).join(",\n")}\n]}\n`;
}

/** Pretty JSON with arrays of plain values kept on one line. */
export function readableJson(doc) {
  return JSON.stringify(doc, null, 2).replace(/\[\s+([^[\]{}]*?)\s+\]/g,
    (_, inner) => `[${inner.replace(/\s*\n\s*/g, " ")}]`);
}

export class TryIt {
  constructor(models) {
    this.models = models;
    this.choice = "";
    this.preview = null;
  }

  setUp() {
    byId("try-model").addEventListener("change", () => this.chosen());
    for (const radio of document.querySelectorAll("input[name='try-mode']")) {
      radio.addEventListener("change", () => this.showMode());
    }
    byId("try-image").addEventListener("submit", (event) => {
      event.preventDefault();
      this.predictImage();
    });
    byId("try-tensors").addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendTensors();
    });
    byId("tensor-reset").addEventListener("click", () => this.resetExample());
    byId("image-file").addEventListener("change", () => this.showPreview());
    dropTarget(byId("image-drop"), (files) => setInputFile(byId("image-file"), files[0]));
  }

  /** Offer the versions that are ready now, keeping the current choice when it still is. */
  update() {
    const select = byId("try-model");
    const ready = this.models.ready();
    const values = ready.map((m) => `${m.name}/${m.version}`);
    const current = [...select.options].map((o) => o.value);
    if (JSON.stringify(values) !== JSON.stringify(current)) {
      fill(select, ready.length ? ready.map((m) => h("option", { value: `${m.name}/${m.version}` },
        `${m.name} (version ${m.version})`)) : h("option", { value: "" }, "no ready model"));
      if (values.includes(this.choice)) select.value = this.choice;
    }
    if (select.value !== this.choice) this.chosen();
  }

  selected() {
    const [name, version] = splitChoice(byId("try-model").value);
    return this.models.ready().find((m) => m.name === name && m.version === version);
  }

  chosen() {
    this.choice = byId("try-model").value;
    const model = this.selected();
    const images = Boolean(model && model.metadata.preprocess);
    byId("try-mode").hidden = !images;
    byId("try-mode-image").checked = images;
    byId("try-mode-tensors").checked = !images;
    if (model && model.metadata.postprocess) {
      byId("image-top-k").value = String(model.metadata.postprocess.top_k);
    }
    this.resetExample();
    fill(byId("try-result"));
    this.showMode();
  }

  showMode() {
    const model = this.selected();
    const image = byId("try-mode-image").checked;
    byId("try-image").hidden = !model || !image;
    byId("try-tensors").hidden = !model || image;
  }

  resetExample() {
    const model = this.selected();
    byId("tensor-request").value = model ? exampleRequest(model.metadata) : "";
  }

  showPreview() {
    const file = byId("image-file").files[0];
    const img = byId("image-preview");
    if (this.preview) URL.revokeObjectURL(this.preview);
    this.preview = file ? URL.createObjectURL(file) : null;
    img.hidden = !file;
    if (file) img.src = this.preview;
    else img.removeAttribute("src");
  }

  /** ``send()`` with the inference key asked for (once more) when the server wants one. */
  async withInferenceKey(send) {
    for (;;) {
      try {
        return await send();
      } catch (err) {
        if (err instanceof ApiError && err.status === 401 &&
            (await askKeys(err.message, "inference"))) continue;
        throw err;
      }
    }
  }

  async predictImage() {
    const model = this.selected();
    const result = byId("try-result");
    const file = byId("image-file").files[0];
    if (!file) {
      fill(result, errorBox("Missing:", "pick or drop an image"));
      return;
    }
    const form = new FormData();
    form.append("model", model.name);
    form.append("version", model.version);
    const topK = byId("image-top-k").value.trim();
    if (topK !== "") form.append("top_k", topK);
    form.append("file", file, file.name);
    fill(result, h("p", { class: "muted" }, "Running…"));
    const started = performance.now();
    try {
      const answer = await this.withInferenceKey(() =>
        call("predict", { method: "POST", body: form, auth: "inference" }));
      const seconds = (performance.now() - started) / 1000;
      fill(result, predictions(answer, seconds));
    } catch (err) {
      fill(result, errorBox(`The server answered ${err.status || "nothing"}:`, err.message));
    }
  }

  async sendTensors() {
    const model = this.selected();
    const result = byId("try-result");
    const text = byId("tensor-request").value;
    try {
      JSON.parse(text);
    } catch (err) {
      fill(result, errorBox("The request is not valid JSON:", err.message));
      return;
    }
    const path = `v2/models/${segment(model.name)}/versions/${segment(model.version)}/infer`;
    fill(result, h("p", { class: "muted" }, "Running…"));
    const started = performance.now();
    try {
      const answer = await this.withInferenceKey(() => call(path, {
        method: "POST",
        body: text,
        headers: { "Content-Type": "application/json" },
        auth: "inference",
      }));
      const seconds = (performance.now() - started) / 1000;
      fill(result,
        h("p", {}, h("strong", {}, `${answer.model_name} version ${answer.model_version}`),
          ` answered in ${duration(seconds)}`),
        h("pre", { class: "answer", tabindex: "0", "aria-label": "Answer" },
          readableJson(answer)));
    } catch (err) {
      fill(result, errorBox(`The server answered ${err.status || "nothing"}:`, err.message));
    }
  }
}

function splitChoice(value) {
  const cut = value.lastIndexOf("/");
  return cut < 0 ? ["", ""] : [value.slice(0, cut), value.slice(cut + 1)];
}

function predictions(answer, seconds) {
  const best = answer.predictions[0] || [];
  return h("div", {},
    h("p", {}, h("strong", {}, `${answer.model} version ${answer.version}`),
      ` answered in ${duration(seconds)}`),
    h("ol", { class: "labels", "aria-label": "Top labels, best first" },
      best.map((p) => {
        const bar = h("span", {});
        bar.style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
        return h("li", {},
          h("span", { class: "label" }, p.label !== undefined && p.label !== null
            ? p.label : `class ${p.index}`),
          h("span", { class: "bar", "aria-hidden": "true" }, bar),
          h("span", { class: "score" }, p.score.toFixed(4)));
      })));
}
