// The Models panel: every model and version with its state, and what each ready one runs on
// and expects. With management access (a key, or an open server) the list is GET /models:
// every version on disk with its state and reason. Without it, the versions being served
// (GET /v2/models/stats), which needs no key.

import { ApiError, call, segment } from "./api.js";
import { askKeys, confirmAction } from "./dialogs.js";
import { byId, bytes, errorBox, fill, h } from "./dom.js";

/** What the server said about management: "unknown", "ok", "needs-key" or "disabled". */
export const management = { state: "unknown", message: "" };

export class ModelList {
  constructor(onChange) {
    this.onChange = onChange;
    this.models = [];
    this.details = new Map(); // "name/version" -> {metadata, config} or {error}
    this.rendered = "";
    this.seen = new Set(); // versions rendered once already
  }

  /** Versions that can answer now, with their metadata: [{name, version, metadata}]. */
  ready() {
    const out = [];
    for (const model of this.models) {
      for (const version of model.versions) {
        const found = this.details.get(`${model.name}/${version.version}`);
        if (version.state === "READY" && found && found.metadata) {
          out.push({ name: model.name, version: version.version, metadata: found.metadata });
        }
      }
    }
    return out;
  }

  loading() {
    return this.models.some((m) => m.versions.some((v) => v.state === "LOADING"));
  }

  /** Forget what is known of one version (its file was replaced). */
  forget(name, version) {
    this.details.delete(`${name}/${version}`);
  }

  async refresh() {
    try {
      this.models = await this.fetchModels();
    } catch (err) {
      fill(byId("models-status"), errorBox("Could not list the models:", err.message));
      return;
    }
    await this.fetchDetails();
    this.render();
    this.onChange();
  }

  async fetchModels() {
    try {
      const doc = await call("models", { auth: "management" });
      management.state = "ok";
      management.message = "";
      return doc.models;
    } catch (err) {
      if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) throw err;
      management.state = err.status === 403 ? "disabled" : "needs-key";
      management.message = err.message;
    }
    const stats = await call("v2/models/stats");
    const byName = new Map();
    for (const entry of stats.model_stats) {
      if (!byName.has(entry.name)) {
        byName.set(entry.name, { name: entry.name, state: "READY", reason: "", versions: [] });
      }
      byName.get(entry.name).versions.push({ version: entry.version, state: "READY", reason: "" });
    }
    return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async fetchDetails() {
    const wanted = new Set();
    const fetches = [];
    for (const model of this.models) {
      for (const version of model.versions) {
        if (version.state !== "READY") continue;
        const key = `${model.name}/${version.version}`;
        wanted.add(key);
        if (this.details.has(key)) continue;
        const base = `v2/models/${segment(model.name)}/versions/${segment(version.version)}`;
        fetches.push(
          Promise.all([call(base), call(`${base}/config`)])
            .then(([metadata, config]) => this.details.set(key, { metadata, config }))
            .catch((err) => this.details.set(key, { error: err.message })),
        );
      }
    }
    await Promise.all(fetches);
    for (const key of [...this.details.keys()]) {
      if (!wanted.has(key)) this.details.delete(key);
    }
  }

  render() {
    this.renderNote();
    const count = this.models.reduce((n, m) => n + m.versions.length, 0);
    byId("models-status").textContent = this.models.length
      ? `${this.models.length} model${this.models.length === 1 ? "" : "s"}, ` +
        `${count} version${count === 1 ? "" : "s"}`
      : "No models yet.";
    // Redraw only on a change, keeping open details and focus, so that polling does not
    // disturb someone reading or moving through the list with the keyboard.
    const signature = JSON.stringify([this.models, [...this.details.entries()], management]);
    if (signature === this.rendered) return;
    this.rendered = signature;
    const list = byId("models-list");
    const open = new Set(
      [...list.querySelectorAll("details[open]")].map((el) => el.dataset.key),
    );
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.focus
      : undefined;
    fill(list, this.models.map((model) => this.renderModel(model, open)));
    if (focused) {
      const again = [...list.querySelectorAll("[data-focus]")].find(
        (el) => el.dataset.focus === focused,
      );
      if (again) again.focus();
    }
  }

  renderNote() {
    const note = byId("models-note");
    if (management.state === "ok") {
      note.hidden = true;
      return;
    }
    note.hidden = false;
    if (management.state === "disabled") {
      fill(note, "Only the versions being served are listed: management is disabled on this ",
        "server, so versions that are loading, failed or unloaded (and why) are not shown.");
    } else {
      fill(note, "Only the versions being served are listed. ",
        h("button", { type: "button", class: "link", onclick: () => askKeys(management.message) },
          "Enter the management key"),
        " to see every version with its state and the reason when it is not ready.");
    }
  }

  renderModel(model, open) {
    return h("article", { class: "model", "data-model": model.name },
      h("div", { class: "model-head" },
        h("h3", {}, model.name),
        h("span", { class: `badge ${model.state}` }, model.state)),
      // A reason that one of its versions gives is shown with that version only.
      model.reason && !model.versions.some((v) => v.reason === model.reason)
        ? h("p", { class: "reason" }, model.reason) : null,
      model.versions.map((version) => this.renderVersion(model, version, open)));
  }

  renderVersion(model, version, open) {
    const key = `${model.name}/${version.version}`;
    const found = this.details.get(key);
    const provider = found && found.metadata ? found.metadata.providers[0] : null;
    // A version that is not ready shows why from the start; afterwards the reader decides.
    const first = !this.seen.has(key);
    this.seen.add(key);
    const expanded = open.has(key) || (first && Boolean(version.reason));
    const details = h("details", { class: "version", "data-key": key, open: expanded },
      h("summary", { "data-focus": `summary:${key}` },
        h("span", {}, `version ${version.version}`),
        h("span", { class: `badge ${version.state}` }, version.state),
        provider ? h("span", { class: "muted" }, provider) : null),
      version.reason ? h("p", { class: "reason" }, version.reason) : null,
      found && found.error ? errorBox("Metadata:", found.error) : null,
      found && found.metadata ? describe(found.metadata, found.config, version) : null,
      version.memory !== undefined && !(found && found.metadata)
        ? facts([["Memory", memory(version.memory)]]) : null,
      management.state === "ok" && version.on_disk !== false
        ? h("div", { class: "version-actions" },
          h("button", {
            type: "button",
            class: "danger",
            "data-focus": `delete:${key}`,
            onclick: () => this.deleteVersion(model.name, version.version),
          }, `Delete version ${version.version}`))
        : null);
    return details;
  }

  async deleteVersion(name, version) {
    const sure = await confirmAction(
      "Delete a version",
      `Delete version ${version} of ${name} from the server's disk? Requests in flight finish first.`,
      "Delete",
    );
    if (!sure) return;
    const message = byId("models-message");
    const path = `models/${segment(name)}/versions/${segment(version)}`;
    for (;;) {
      try {
        await call(path, { method: "DELETE", auth: "management" });
        fill(message, h("p", { class: "success" }, `Deleted version ${version} of ${name}.`));
        break;
      } catch (err) {
        if (err.status === 401 && (await askKeys(err.message))) continue;
        fill(message, errorBox(`Could not delete version ${version} of ${name}:`, err.message));
        break;
      }
    }
    await this.refresh();
  }
}

function facts(rows) {
  return h("dl", { class: "facts" },
    rows.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function memory(value) {
  if (typeof value === "number") return bytes(value);
  if (value && typeof value === "object") {
    return Object.entries(value)
      .map(([k, v]) => `${k}: ${typeof v === "number" ? bytes(v) : String(v)}`)
      .join(", ");
  }
  return String(value);
}

function shape(dims) {
  return `[${dims.map((d) => (d < 0 ? "any" : String(d))).join(", ")}]`;
}

function tensorTable(caption, specs) {
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "name"),
      h("th", { scope: "col" }, "datatype"), h("th", { scope: "col" }, "shape"))),
    h("tbody", {}, specs.map((spec) => h("tr", {},
      h("td", {}, spec.name), h("td", {}, spec.datatype), h("td", {}, shape(spec.shape))))));
}

function batching(metadata, config) {
  const dynamic = config && config.dynamic_batching;
  const most = metadata.max_batch_size > 0 ? `up to ${metadata.max_batch_size} rows` : "none";
  if (!dynamic) return `${most}; dynamic batching off`;
  const sizes = dynamic.preferred_batch_size || [];
  return `${most}; dynamic batching on (max delay ${dynamic.max_queue_delay_microseconds} µs` +
    `${sizes.length ? `, preferred ${sizes.join(", ")}` : ""})`;
}

function instances(config) {
  const groups = (config && config.instance_group) || [];
  return groups.map((g) => `${g.count} × ${String(g.kind).replace("KIND_", "")}` +
    (g.gpus && g.gpus.length ? ` (GPU ${g.gpus.join(", ")})` : "")).join(", ");
}

function imageSummary(metadata) {
  const pre = metadata.preprocess;
  if (!pre) return metadata.images_unsupported ? `no (${metadata.images_unsupported})` : null;
  const size = Array.isArray(pre.size) ? pre.size.join("×") : "";
  const post = metadata.postprocess;
  return `${pre.color} ${size}, ${pre.resize}, invert ${pre.invert}` +
    (post ? `; top ${post.top_k} of '${post.output}'` : "");
}

function describe(metadata, config, version) {
  const fallback = metadata.provider_fallback || [];
  const mem = version.memory !== undefined ? version.memory : metadata.memory;
  return h("div", {},
    facts([
      ["Providers", metadata.providers.join(", ")],
      ["Fallback", fallback.length ? `asked for ${fallback.join(", ")}, not available` : "none"],
      ["Instances", instances(config)],
      ["Batching", batching(metadata, config)],
      ["Memory", mem !== undefined ? memory(mem) : null],
      ["Images", imageSummary(metadata)],
    ]),
    tensorTable("Inputs", metadata.inputs),
    tensorTable("Outputs", metadata.outputs));
}
