// The Upload panel: a model file (and labels/config) sent to POST /models with a progress bar
// driven by the upload's own progress events, then the server's verdict as it came.

import { postForm } from "./api.js";
import { askKeys } from "./dialogs.js";
import { byId, bytes, dropTarget, errorBox, fill, h, setInputFile } from "./dom.js";
import { management } from "./models.js";

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** A model name from a file name ("ResNet 50.onnx" -> "ResNet-50"), or "" if none fits. */
function nameFrom(fileName) {
  const stem = fileName.replace(/\.onnx$/i, "");
  const name = stem.replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 64);
  return name === "model" ? "" : name;
}

export class Upload {
  constructor(models, onBusy) {
    this.models = models;
    this.onBusy = onBusy;
    this.autoName = "";
  }

  setUp() {
    byId("upload-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    byId("upload-file").addEventListener("change", () => this.fileChosen());
    dropTarget(byId("drop-zone"), (files) => this.dropped(files));
  }

  /** Show or hide the "management is disabled" explanation. */
  showManagement() {
    const disabled = management.state === "disabled";
    byId("upload-disabled").hidden = !disabled;
    byId("upload-disabled-text").textContent = disabled ? management.message : "";
  }

  dropped(files) {
    for (const file of files) {
      const lower = file.name.toLowerCase();
      if (lower.endsWith(".onnx")) setInputFile(byId("upload-file"), file);
      else if (lower.endsWith(".json")) setInputFile(byId("upload-config"), file);
      else if (lower.endsWith(".txt")) setInputFile(byId("upload-labels"), file);
      else {
        fill(byId("upload-status"), errorBox("Not used:", `${file.name} (expected .onnx, ` +
          "labels .txt or config .json)"));
      }
    }
  }

  fileChosen() {
    const input = byId("upload-file");
    const name = byId("upload-name");
    if (input.files.length && (name.value === "" || name.value === this.autoName)) {
      this.autoName = nameFrom(input.files[0].name);
      name.value = this.autoName;
    }
  }

  setProgress(loaded, total) {
    const percent = total > 0 ? Math.floor((loaded / total) * 100) : 0;
    byId("upload-progress").value = percent;
    byId("upload-percent").textContent =
      `${percent}% (${bytes(loaded)} of ${bytes(total)})`;
  }

  async submit() {
    const status = byId("upload-status");
    const file = byId("upload-file").files[0];
    const name = byId("upload-name").value.trim();
    const version = byId("upload-version").value.trim();
    if (!file) {
      fill(status, errorBox("Missing:", "pick or drop a .onnx model file"));
      return;
    }
    if (!NAME.test(name)) {
      fill(status, errorBox("Name:", "use 1 to 64 letters, digits, '_', '.' or '-', " +
        "starting with a letter or digit"));
      byId("upload-name").focus();
      return;
    }
    if (version !== "" && !/^[1-9][0-9]*$/.test(version)) {
      fill(status, errorBox("Version:", "a positive whole number, or empty for the next one"));
      return;
    }
    if (management.state === "needs-key" && !(await askKeys(management.message))) return;
    const form = new FormData();
    // The fields go before the file, so that the server checks them before the upload.
    form.append("name", name);
    if (version !== "") form.append("version", version);
    if (byId("upload-overwrite").checked) form.append("overwrite", "true");
    const config = byId("upload-config").files[0];
    if (config) form.append("config", await config.text());
    const labels = byId("upload-labels").files[0];
    if (labels) form.append("labels", await labels.text());
    form.append("file", file, file.name);
    await this.send(form, name);
  }

  async send(form, name) {
    const status = byId("upload-status");
    const button = byId("upload-submit");
    button.disabled = true;
    this.onBusy(true);
    try {
      for (;;) {
        this.setProgress(0, 0);
        fill(status, h("p", { class: "muted" }, "Uploading…"));
        const answer = await postForm("models", form, {
          auth: "management",
          onProgress: (loaded, total) => this.setProgress(loaded, total),
          onSent: () => fill(status, h("p", { class: "muted" },
            "Uploaded; the server is validating and loading the model…")),
        });
        if (answer.status === 401 && (await askKeys(answer.error))) continue;
        if (answer.status === 403) {
          management.state = "disabled";
          management.message = answer.error;
          this.showManagement();
        }
        if (answer.error !== null) {
          fill(status, errorBox(`The server refused the upload (${answer.status}):`,
            answer.error));
        } else {
          this.models.forget(answer.body.name, answer.body.version);
          fill(status, installed(answer.body));
        }
        break;
      }
    } catch (err) {
      fill(status, errorBox("Upload failed:", err.message));
    } finally {
      button.disabled = false;
      this.onBusy(false);
      await this.models.refresh();
      this.showManagement();
    }
    return name;
  }
}

function opsets(found) {
  if (!found || typeof found !== "object") return String(found);
  return Object.entries(found).map(([domain, version]) => `${domain || "ai.onnx"} ${version}`)
    .join(", ");
}

function installed(body) {
  const tensors = (specs) => specs.map((s) => `${s.name} ${s.datatype} [${s.shape.join(", ")}]`)
    .join("; ");
  return h("div", { class: "success", "data-state": body.state },
    h("p", {}, h("strong", {}, `${body.name} version ${body.version}: ${body.state}`),
      body.replaced ? " (replaced the previous file)" : ""),
    body.reason ? h("p", { class: "reason" }, body.reason) : null,
    h("dl", { class: "facts" },
      h("dt", {}, "Inputs"), h("dd", {}, tensors(body.inputs)),
      h("dt", {}, "Outputs"), h("dd", {}, tensors(body.outputs)),
      h("dt", {}, "File"), h("dd", {}, `${bytes(body.size_bytes)}, sha256 ${body.sha256}`),
      h("dt", {}, "ONNX"), h("dd", {},
        `IR ${body.ir_version}, opsets ${opsets(body.opsets)}` +
        (body.producer ? `, made by ${body.producer}` : ""))));
}
