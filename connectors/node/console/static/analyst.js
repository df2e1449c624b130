// The analyst: browse the catalog, negotiate, run a joint score on an uploaded file with live
// progress, look at the scores, download results and receipts; a refusal is explained.
import { enc, get, post } from "./api.js";
import { badge, card, clear, download, errorText, field, h, readFile, select, short, table, when } from "./dom.js";
import { explain } from "./explain.js";
import { bandRows, bars, histogram } from "./plots.js";

const FINAL = ["FINALIZED", "TERMINATED"];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A small CSV reader: header row, comma separated, optional double quotes.
export function parseCsv(text) {
  const rows = [];
  for (const line of text.split(/\r?\n/)) {
    if (!line.trim()) continue;
    const cells = [];
    let cur = "", quoted = false;
    for (let i = 0; i < line.length; i += 1) {
      const c = line[i];
      if (quoted) {
        if (c === '"' && line[i + 1] === '"') { cur += '"'; i += 1; }
        else if (c === '"') quoted = false;
        else cur += c;
      } else if (c === '"') quoted = true;
      else if (c === ",") { cells.push(cur); cur = ""; }
      else cur += c;
    }
    cells.push(cur);
    rows.push(cells.map((x) => x.trim()));
  }
  const [header, ...body] = rows;
  return { header: header || [], rows: body };
}

async function negotiate(row, offer, status, refresh) {
  clear(status).append(h("p", {}, `Negotiating ${row.dataset} with ${row.provider}…`));
  try {
    let n = await post("/management/negotiations", { provider: row.provider, datasetId: row.dataset, offerId: offer });
    for (let i = 0; i < 60 && !FINAL.includes(n.state); i += 1) {
      clear(status).append(h("p", {}, `Negotiation with ${row.provider}: ${n.state}`));
      await sleep(500);
      n = await get(`/management/negotiations/${enc(n.id)}`);
    }
    clear(status).append(
      h("p", { class: n.state === "FINALIZED" ? "ok" : "error", role: "status" }, `Negotiation with ${row.provider} for ${row.dataset}: ${n.state}${n.agreementId ? ` · agreement ${short(n.agreementId, 24)}` : ""}`),
    );
    await refresh();
  } catch (err) {
    clear(status).append(h("p", { class: "error", role: "alert" }, errorText(err)));
  }
}

function resolve(model, me, agreements) {
  const providers = Object.keys(model.weights).filter((p) => p !== me);
  const chosen = {}, datasets = {};
  for (const p of providers) {
    const usable = agreements.filter((a) => a.authorises && a.agreement.assigner === p && a.agreement.assignee === me);
    if (!usable.length) throw new Error(`no agreement in force with ${p}: negotiate first`);
    if (usable.length > 1 && !usable.every((a) => a.agreement.target === usable[0].agreement.target)) {
      throw new Error(`several agreements with ${p} on different datasets`);
    }
    const a = usable[usable.length - 1];
    chosen[p] = a.id;
    datasets[p] = a.agreement.target;
  }
  return { chosen, datasets, providers };
}

async function ownDataset(columns) {
  const matches = [];
  for (const s of await get("/management/datasets")) {
    const v = await get(`/management/datasets/${enc(s.id)}`);
    const names = new Set(v.dataset.table.fields.map((f) => f.name));
    if (columns.every((c) => names.has(c))) matches.push(s.id);
  }
  if (matches.length !== 1) throw new Error(`own datasets with columns ${columns.join(", ")}: ${matches.join(", ") || "none"}`);
  return matches[0];
}

function resultView(result, labelsById, name) {
  const outputs = result.outputs;
  const labels = labelsById ? result.entities.map((e) => (labelsById.has(e) ? labelsById.get(e) : null)) : null;
  const logistic = result.link === "logistic" || outputs.every((x) => x >= 0 && x <= 1);
  const lo = logistic ? 0 : Math.min(...outputs), hi = logistic ? 1 : Math.max(...outputs);
  const edges = Array.from({ length: 6 }, (_, i) => lo + ((hi - lo) * i) / 5);
  const rows = bandRows(outputs, labels, edges);
  const csv = ["entity,logit,output", ...result.entities.map((e, i) => `${e},${result.logits[i]},${outputs[i]}`)].join("\n") + "\n";
  const receipts = Object.keys(result.receipts || {});
  return h(
    "div",
    { class: "result" },
    h("p", { class: "ok", role: "status" }, `Done: ${result.entities.length} entities scored with ${result.protocol}; receipts from ${receipts.join(", ") || "nobody"}.`),
    h("div", { class: "row" },
      h("button", { type: "button", onclick: () => download(`${name}-scores.csv`, csv, "text/csv") }, "Download results (CSV)"),
      h("button", { type: "button", onclick: () => download(`${name}-receipts.json`, JSON.stringify(result.receipts, null, 2)) }, "Download receipts (JSON)"),
    ),
    h("div", { class: "grid" },
      h("div", {}, h("h3", {}, "Score distribution"), histogram(outputs, { lo, hi, labels: labels && labels.some((x) => x !== null) ? labels : null })),
      h("div", {}, h("h3", {}, "Score bands"), table(
        [
          { label: "band", value: (r) => r.band },
          { label: "count", num: true, value: (r) => r.count },
          { label: "labels known", num: true, value: (r) => r.known },
          { label: "default rate", num: true, value: (r) => r.rate },
        ],
        rows,
      )),
    ),
    Object.keys(result.missing || {}).length ? h("p", { class: "warn" }, `Missing at: ${Object.entries(result.missing).map(([p, m]) => `${p} (${m.length})`).join(", ")}`) : null,
  );
}

function dryRunForm(me, agreements) {
  const usable = agreements.filter((a) => a.authorises);
  if (!usable.length) return h("p", { class: "muted" }, "Negotiate an agreement first.");
  const agreement = select("ask-agreement", usable.map((a) => [a.id, `${a.agreement.assigner}: ${a.agreement.target} (${short(a.id, 18)})`]), usable[0].id);
  const purpose = h("input", { name: "ask-purpose", value: "pre-loan-review", size: 16 });
  const kind = select("ask-kind", ["score", "aggregate", "train"], "score");
  const protocol = select("ask-protocol", ["ckks", "paillier", "additive"], "ckks");
  const cohort = h("input", { name: "ask-cohort", type: "number", min: 0, value: 100, size: 6 });
  const out = h("div", { class: "ask-result" });
  return h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(out);
        const a = usable.find((x) => x.id === agreement.value);
        try {
          const d = await post("/management/policy/dry-run", { dataset: a.agreement.target, agreement: a.id, assignee: me.node, purpose: purpose.value, kind: kind.value, protocol: protocol.value, cohortSize: Number(cohort.value) });
          out.append(explain(d.trace, { ...d, dry: true, peer: d.allowed ? null : a.agreement.assigner }), d.note ? h("p", { class: "muted" }, `Note: ${d.note}.`) : null);
        } catch (err) {
          out.append(h("p", { class: "error", role: "alert" }, errorText(err)));
        }
      },
    },
    h("div", { class: "row" }, field("Agreement", agreement), field("Purpose", purpose), field("Computation", kind), field("Protocol", protocol), field("Entities", cohort), h("button", { type: "submit", class: "secondary" }, "Would it be allowed?")),
    out,
  );
}

function aggregateForm(me, agreements, state) {
  const usable = agreements.filter((a) => a.authorises);
  if (!usable.length) return h("p", { class: "muted" }, "Negotiate an agreement first.");
  const agreement = select("agg-agreement", usable.map((a) => [a.id, `${a.agreement.assigner}: ${a.agreement.target}`]), usable[0].id);
  const column = h("input", { name: "agg-column", size: 14, required: true });
  const statistic = select("agg-statistic", ["mean", "sum", "count", "histogram"], "mean");
  const protocol = select("agg-protocol", ["paillier", "ckks", "additive"], "paillier");
  const purpose = h("input", { name: "agg-purpose", value: "risk-monitoring", size: 16 });
  const bins = h("input", { name: "agg-bins", size: 16, placeholder: "histogram: 0,1,2,5" });
  const file = h("input", { type: "file", name: "cohort", accept: ".csv,text/csv", required: true });
  const idColumn = h("input", { name: "agg-id-column", value: "uscc", size: 10 });
  const stage = h("p", { class: "muted", role: "status" });
  const out = h("div", { class: "aggregate-result" });
  return h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(out);
        try {
          const csv = parseCsv(await readFile(file));
          const col = csv.header.indexOf(idColumn.value);
          if (col < 0) throw new Error(`the file has no column “${idColumn.value}”`);
          const a = usable.find((x) => x.id === agreement.value);
          const body = { provider: a.agreement.assigner, agreement: a.id, dataset: a.agreement.target, column: column.value, statistic: statistic.value, protocol: protocol.value, purpose: purpose.value, cohort: csv.rows.map((r) => r[col]).filter(Boolean) };
          if (statistic.value === "histogram") body.bins = bins.value.split(",").map(Number);
          let view = await post("/management/queries/aggregate", body);
          while (view.state === "queued" || view.state === "running") {
            stage.textContent = `${view.state}: ${view.stage} (${Math.round(view.fraction * 100)} %)`;
            view = await get(`/management/queries/${enc(view.id)}?wait=1`);
          }
          stage.textContent = `${view.state}: ${view.stage}`;
          if (view.state === "done") {
            const r = view.result;
            out.append(h("p", { class: "ok" }, r.statistic === "histogram" ? `Histogram over a cohort of ${r.cohortSize}.` : `${r.statistic} = ${r.value} over a cohort of ${r.cohortSize}.`));
            if (r.statistic === "histogram") out.append(bars(r.counts.map((c, i) => ({ label: String(r.bins[i] ?? i), a: c })), { title: "histogram", aLabel: "entities" }));
            out.append(h("button", { type: "button", class: "secondary", onclick: () => download("aggregate-receipts.json", JSON.stringify(r.receipts, null, 2)) }, "Download receipts (JSON)"));
          } else {
            const e = view.error || {};
            out.append(explain(e.trace || [], { allowed: false, reason: e.detail || e.title, peer: e.peer }));
          }
          state.refreshQueries();
        } catch (err) {
          out.append(h("p", { class: "error", role: "alert" }, errorText(err)));
        }
      },
    },
    h("p", { class: "muted" }, "A statistic of one provider column over your cohort, aligned by private set intersection: the provider never learns which entities you chose."),
    h("div", { class: "row" }, field("Agreement", agreement), field("Column", column), field("Statistic", statistic), field("Protocol", protocol), field("Purpose", purpose), field("Bins", bins)),
    h("div", { class: "row" }, field("Cohort (CSV file)", file), field("Id column", idColumn), h("button", { type: "submit" }, "Run aggregate")),
    stage,
    out,
  );
}

function scoreForm(me, state) {
  const file = h("input", { type: "file", name: "entities", accept: ".csv,text/csv", required: true });
  const idColumn = h("input", { name: "id-column", value: "uscc", size: 10 });
  const labelColumn = h("input", { name: "label-column", value: "", size: 10, placeholder: "optional" });
  const idKind = select("id-kind", ["uscc", "opaque"], "uscc");
  const modelFile = h("input", { type: "file", name: "model", accept: ".json,application/json" });
  const modelText = h("textarea", { rows: 6, name: "model-json", placeholder: '{"intercept": 0, "link": "logistic", "weights": {"tax-bureau": {"column": 0.5}}}' });
  const protocol = select("protocol", ["ckks", "paillier", "additive"], "ckks");
  const purpose = h("input", { name: "purpose", value: "pre-loan-review", size: 16 });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "query progress" });
  const stage = h("p", { class: "muted", role: "status", "aria-live": "polite" }, "Not started.");
  const out = h("div", { class: "score-result" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(out);
        bar.value = 0;
        try {
          const csv = parseCsv(await readFile(file));
          const col = csv.header.indexOf(idColumn.value);
          if (col < 0) throw new Error(`the file has no column “${idColumn.value}” (columns: ${csv.header.join(", ")})`);
          const entities = csv.rows.map((r) => r[col]).filter(Boolean);
          let labelsById = null;
          const lc = labelColumn.value ? csv.header.indexOf(labelColumn.value) : -1;
          if (labelColumn.value && lc < 0) throw new Error(`the file has no column “${labelColumn.value}”`);
          if (lc >= 0) labelsById = new Map(csv.rows.map((r) => [r[col], r[lc] === "" ? null : Number(r[lc]) ? 1 : 0]));
          const model = JSON.parse(modelFile.files && modelFile.files[0] ? await modelFile.files[0].text() : modelText.value);
          const { chosen, datasets } = resolve(model, me.node, await get("/management/agreements"));
          if (model.weights[me.node]) datasets[me.node] = await ownDataset(Object.keys(model.weights[me.node]));
          const query = { v: 1, kind: "score", purpose: purpose.value, protocol: protocol.value, mode: "analyst-held", model, agreements: chosen, datasets, entities, idKind: idKind.value };
          stage.textContent = `Submitting ${entities.length} entities…`;
          let view = await post("/management/queries/score", query);
          while (view.state === "queued" || view.state === "running") {
            bar.value = view.fraction;
            stage.textContent = `${view.state}: ${view.stage} (${Math.round(view.fraction * 100)} %)`;
            view = await get(`/management/queries/${enc(view.id)}?wait=1`);
          }
          bar.value = view.state === "done" ? 1 : bar.value;
          stage.textContent = view.state === "done" ? "done" : `${view.state}: ${view.stage}`;
          if (view.state === "done") out.append(resultView(view.result, labelsById, `query-${view.id.replace(/^urn:uuid:/, "").replace(/[^A-Za-z0-9-]/g, "").slice(0, 8)}`));
          else {
            const e = view.error || {};
            out.append(explain(e.trace || [], { allowed: false, reason: e.detail || e.title, peer: e.peer }));
          }
          state.refreshQueries();
        } catch (err) {
          stage.textContent = "Not started.";
          out.append(h("p", { class: "error", role: "alert" }, err instanceof SyntaxError ? `The model is not JSON: ${err.message}` : errorText(err)));
        }
      },
    },
    h("div", { class: "row" }, field("Entities (CSV file)", file), field("Id column", idColumn), field("Label column", labelColumn), field("Id kind", idKind)),
    h("div", { class: "row" }, field("Model file (JSON)", modelFile), field("Protocol", protocol), field("Purpose", purpose)),
    field("…or paste the model (JSON)", modelText),
    h("button", { type: "submit" }, "Run joint score"),
    h("div", { class: "progress-box" }, bar, stage),
    out,
  );
  return form;
}

export async function renderAnalyst(root, me) {
  root.append(h("h1", {}, `Analyst · ${me.node}`));
  const catalogBox = h("div");
  const status = h("div", { role: "status" });
  const agreementsBox = h("div");
  const askBox = h("div");
  const aggBox = h("div");
  const queriesBox = h("div");
  const state = {};
  const refresh = async () => {
    const agreements = (await get("/management/agreements")).filter((a) => a.agreement.assignee === me.node);
    clear(agreementsBox).append(
      table(
        [
          { label: "provider", value: (a) => a.agreement.assigner },
          { label: "dataset", value: (a) => h("code", {}, a.agreement.target) },
          { label: "agreement", value: (a) => h("code", { title: a.id }, short(a.id, 22)) },
          { label: "state", value: (a) => badge(a.state, a.authorises ? "ok" : "warn") },
        ],
        agreements,
        { empty: "No agreement yet: negotiate from the catalog." },
      ),
    );
    clear(askBox).append(dryRunForm(me, agreements));
    clear(aggBox).append(aggregateForm(me, agreements, state));
  };
  state.refreshQueries = async () => {
    const qs = await get("/management/queries");
    clear(queriesBox).append(
      table(
        [
          { label: "submitted", value: (q) => when(q.submittedAt) },
          { label: "kind", value: (q) => q.kind },
          { label: "protocol", value: (q) => q.protocol },
          { label: "providers", value: (q) => q.providers.join(", ") },
          { label: "entities", num: true, value: (q) => q.entities },
          { label: "state", value: (q) => badge(q.state, q.state === "done" ? "ok" : q.state === "failed" ? "bad" : "warn") },
        ],
        qs.slice().reverse(),
        { empty: "No query yet." },
      ),
    );
  };
  root.append(
    card("Catalog and offers", catalogBox, status),
    h("div", { class: "grid" }, card("Agreements held", agreementsBox), card("Queries", queriesBox)),
    card("Before asking: would it be allowed?", h("p", { class: "muted" }, "The agreement's policy evaluated by the same engine the provider runs, on this node's copy; nothing is sent or consumed."), askBox),
    card("Joint score", h("p", { class: "muted" }, "Upload the entities to score; the model names each provider's columns. Providers check their policies before touching a row; a refusal comes back with the provider's trace."), scoreForm(me, state)),
    card("Aggregate", aggBox),
  );
  try {
    const fed = await get("/management/catalog");
    const rows = fed.rows.filter((r) => r.provider !== me.node);
    clear(catalogBox).append(
      table(
        [
          { label: "provider", value: (r) => r.provider },
          { label: "dataset", value: (r) => h("code", {}, r.dataset) },
          { label: "title", value: (r) => r.title },
          { label: "tier", value: (r) => badge(r.tier || "") },
          { label: "max grade", num: true, value: (r) => r.maxGrade },
          { label: "offer", value: (r) => r.offers.map((o) => h("div", {}, h("code", { title: o }, short(o, 18)))) },
          { label: "", value: (r) => r.offers.map((o) => h("button", { type: "button", "aria-label": `Negotiate ${r.dataset} with ${r.provider}`, onclick: () => negotiate(r, o, status, refresh) }, "Negotiate")) },
        ],
        rows,
        { empty: "The federated catalog is empty." },
      ),
    );
  } catch (err) {
    clear(catalogBox).append(h("p", { class: "error" }, errorText(err)));
  }
  await Promise.all([refresh(), state.refreshQueries()]);
}
