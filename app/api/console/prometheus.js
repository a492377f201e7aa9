// Reading the server's Prometheus text: request-duration histograms per model version, and
// figures (rate, quantiles) over the time between two readings.

const DURATION = "onnx_serve_request_duration_seconds";
const FAILURE = "onnx_serve_request_failure_total";
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;

/** The labels of one sample, ``le="0.1",model="a"`` -> {le: "0.1", model: "a"}. */
export function parseLabels(text) {
  const labels = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf("=", i);
    if (eq < 0 || text[eq + 1] !== '"') break;
    const name = text.slice(i, eq).trim();
    let value = "";
    let j = eq + 2;
    for (; j < text.length && text[j] !== '"'; j += 1) {
      if (text[j] === "\\" && j + 1 < text.length) {
        j += 1;
        value += text[j] === "n" ? "\n" : text[j];
      } else {
        value += text[j];
      }
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ",") i += 1;
  }
  return labels;
}

/**
 * One reading of /metrics: for each model version ("name/version"), its request count, the
 * cumulative histogram buckets [[le, count], ...] in order, and its failures, summed over the
 * protocols (REST and gRPC) the requests came in over.
 */
export function reading(text, time) {
  const series = new Map();
  const entry = (labels) => {
    const key = `${labels.model}/${labels.version}`;
    if (!series.has(key)) {
      series.set(key, {
        model: labels.model, version: labels.version, count: 0, buckets: new Map(), failures: 0,
      });
    }
    return series.get(key);
  };
  for (const line of text.split("\n")) {
    if (!line.startsWith("onnx_serve_request_")) continue;
    const match = SAMPLE.exec(line);
    if (!match) continue;
    const [, name, , labelText, valueText] = match;
    const labels = parseLabels(labelText || "");
    if (labels.model === undefined || labels.version === undefined) continue;
    const value = Number(valueText);
    if (name === `${DURATION}_bucket`) {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      const buckets = entry(labels).buckets;
      buckets.set(le, (buckets.get(le) || 0) + value);
    } else if (name === `${DURATION}_count`) {
      entry(labels).count += value;
    } else if (name === FAILURE) {
      entry(labels).failures += value;
    }
  }
  for (const item of series.values()) {
    item.buckets = [...item.buckets.entries()].sort((a, b) => a[0] - b[0]);
  }
  return { time, series };
}

/** The q-quantile of cumulative buckets, interpolated within its bucket as Prometheus does. */
export function quantile(q, buckets) {
  if (buckets.length === 0) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let i = buckets.findIndex(([, count]) => count >= rank);
  if (i < 0) i = buckets.length - 1;
  const [upper, count] = buckets[i];
  if (upper === Infinity) return i > 0 ? buckets[i - 1][0] : null;
  const lower = i > 0 ? buckets[i - 1][0] : 0;
  const below = i > 0 ? buckets[i - 1][1] : 0;
  if (count === below) return upper;
  return lower + ((upper - lower) * (rank - below)) / (count - below);
}

/**
 * Rate, p50 and p99 of one model version between two readings. A count that went down means
 * the server restarted: the newer reading then counts from zero.
 */
export function between(older, newer, key) {
  const now = newer.series.get(key);
  if (!now) return null;
  const seconds = (newer.time - older.time) / 1000;
  if (!(seconds > 0)) return null;
  let before = older.series.get(key);
  if (!before || before.count > now.count || before.buckets.length !== now.buckets.length) {
    before = { count: 0, failures: 0, buckets: now.buckets.map(([le]) => [le, 0]) };
  }
  const buckets = now.buckets.map(([le, count], i) => [le, count - before.buckets[i][1]]);
  const requests = now.count - before.count;
  return {
    seconds,
    requests,
    failures: Math.max(0, now.failures - before.failures),
    rate: requests / seconds,
    p50: quantile(0.5, buckets),
    p99: quantile(0.99, buckets),
  };
}
