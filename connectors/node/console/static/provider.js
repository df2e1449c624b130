// The provider: its catalog (responsibility → resource → table), publishing with the grade
// floor, the policy dry run, agreements, consents, and every use and refusal of its data.
import { api, enc, get, post } from "./api.js";
import { badge, card, clear, errorText, field, h, select, short, table, when } from "./dom.js";
import { explain } from "./explain.js";
import { bars, meter } from "./plots.js";

// JR/T 0197-2020 grades → the most open tier each allows (the floor the node enforces).
const FLOOR = [
  [1, "unconditional", "anyone may pull raw rows"],
  [2, "conditional", "raw rows after an agreed contract"],
  [4, "zone", "computation only: rows never leave"],
  [5, null, "grade 5 never leaves its owner, not even encrypted"],
];
const TIER_ORDER = ["unconditional", "conditional", "zone"];

export function allowedTiers(maxGrade) {
  if (maxGrade >= 5) return [];
  if (maxGrade >= 3) return ["zone"];
  if (maxGrade === 2) return ["conditional", "zone"];
  return TIER_ORDER.slice();
}

const TEMPLATE_DATASET = {
  id: "new-dataset",
  title: "A new dataset",
  tier: "zone",
  keyColumn: "uscc",
  keyKind: "uscc",
  responsibility: { id: "duty", title: "The department's legal duty" },
  resource: { id: "records", title: "Records" },
  table: {
    name: "records",
    fields: [
      { name: "uscc", type: "string", grade: 1 },
      { name: "value", type: "float", grade: 3 },
    ],
  },
};
const TEMPLATE_OFFER = {
  "@type": "Offer",
  permission: [
    {
      action: "use",
      constraint: [
        { leftOperand: "purpose", operator: "isAnyOf", rightOperand: ["pre-loan-review"] },
        { leftOperand: "computation", operator: "isAnyOf", rightOperand: ["score"] },
        { leftOperand: "output", operator: "isAnyOf", rightOperand: ["score"] },
        { leftOperand: "model", operator: "isAnyOf", rightOperand: ["analyst-held", "party-held"] },
      ],
      duty: [{ action: "log" }],
    },
  ],
};

function catalogTree(views) {
  const byResp = new Map();
  for (const v of views) {
    const d = v.dataset;
    const r = d.responsibility || { id: "?", title: "?" };
    if (!byResp.has(r.id)) byResp.set(r.id, { r, resources: new Map() });
    const res = d.resource || { id: "?", title: "?" };
    const group = byResp.get(r.id).resources;
    if (!group.has(res.id)) group.set(res.id, { res, items: [] });
    group.get(res.id).items.push(v);
  }
  const maxGrade = (d) => Math.max(...d.table.fields.map((f) => f.grade));
  return h(
    "div",
    { class: "tree" },
    h(
      "ul",
      {},
      [...byResp.values()].map(({ r, resources }) =>
        h(
          "li",
          {},
          h("strong", {}, `Responsibility: ${r.title}`),
          r.legalBasis ? h("span", { class: "muted" }, ` (${r.legalBasis})`) : null,
          h(
            "ul",
            {},
            [...resources.values()].map(({ res, items }) =>
              h(
                "li",
                {},
                `Resource: ${res.title}`,
                h(
                  "ul",
                  {},
                  items.map((v) =>
                    h(
                      "li",
                      {},
                      h(
                        "details",
                        {},
                        h(
                          "summary",
                          {},
                          h("code", {}, v.dataset.id),
                          ` · table ${v.dataset.table.name} · `,
                          badge(v.dataset.tier),
                          ` · max grade ${maxGrade(v.dataset)} · ${v.source && v.source.rows != null ? `${v.source.rows} rows` : ""} · ${v.offers.length} offer(s)`,
                        ),
                        table(
                          [
                            { label: "field", value: (f) => h("code", {}, f.name) },
                            { label: "type", value: (f) => f.type },
                            { label: "grade", num: true, value: (f) => f.grade },
                            { label: "PI category", value: (f) => f.piCategory || "" },
                            { label: "range", value: (f) => (f.range ? `${f.range.min ?? ""} … ${f.range.max ?? ""}` : "") },
                            { label: "description", value: (f) => f.description || "" },
                          ],
                          v.dataset.table.fields,
                        ),
                      ),
                    ),
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

function floorPanel() {
  const panel = h("div", { class: "floor", role: "status" });
  const update = (text) => {
    clear(panel);
    let doc;
    try {
      doc = JSON.parse(text);
    } catch {
      panel.append(h("p", { class: "error" }, "The dataset is not valid JSON yet."));
      return;
    }
    const grades = ((doc.table || {}).fields || []).map((f) => Number(f.grade) || 0);
    const max = grades.length ? Math.max(...grades) : 0;
    const allowed = allowedTiers(max);
    const ok = allowed.includes(doc.tier);
    panel.append(
      h("p", {}, `Highest field grade: ${max}. `, allowed.length ? `Tiers this grade allows: ${allowed.join(", ")}.` : "Grade 5: it cannot be published."),
      h("p", { class: ok ? "ok" : "bad" }, ok ? `Tier “${doc.tier}” respects the grade floor.` : `Tier “${doc.tier}” is looser than grade ${max} allows: the node will refuse it.`),
      table(
        [
          { label: "grade up to", num: true, value: (r) => r[0] },
          { label: "most open tier", value: (r) => r[1] || "none" },
          { label: "meaning", value: (r) => r[2] },
        ],
        FLOOR,
      ),
    );
  };
  return { panel, update };
}

function publishForm(refresh) {
  const dataset = h("textarea", { rows: 14, name: "dataset" });
  dataset.value = JSON.stringify(TEMPLATE_DATASET, null, 2);
  const offer = h("textarea", { rows: 12, name: "offer" });
  offer.value = JSON.stringify(TEMPLATE_OFFER, null, 2);
  const kind = select("source-kind", ["csv", "parquet", "sqlite"], "csv");
  const path = h("input", { name: "source-path", size: 40, required: true, placeholder: "/srv/data/records.csv" });
  const tableName = h("input", { name: "source-table", size: 12, placeholder: "sqlite only" });
  const floor = floorPanel();
  dataset.addEventListener("input", () => floor.update(dataset.value));
  floor.update(dataset.value);
  const out = h("div", { role: "status" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(out);
        try {
          const source = { kind: kind.value, path: path.value };
          if (tableName.value) source.table = tableName.value;
          const policy = JSON.parse(offer.value);
          if (!policy["@id"]) policy["@id"] = `urn:uuid:${crypto.randomUUID()}`;
          const done = await post("/management/datasets", { dataset: JSON.parse(dataset.value), source, offers: [policy] });
          out.append(h("p", { class: "ok" }, `Published ${done.id}: ${done.rows} rows checked, version ${done.version}${done.federated ? ", in the federated catalog" : ""}.`));
          await refresh();
        } catch (err) {
          out.append(h("p", { class: "error", role: "alert" }, err instanceof SyntaxError ? `Not JSON: ${err.message}` : `Refused: ${errorText(err)}`));
        }
      },
    },
    h("div", { class: "grid" }, h("div", {}, field("Dataset description (JSON)", dataset), floor.panel), h("div", {}, field("Usage policy: the offer (ODRL JSON)", offer))),
    h("div", { class: "row" }, field("Source kind", kind), field("Source path", path), field("SQLite table", tableName)),
    h("button", { type: "submit" }, "Publish"),
    out,
  );
  return form;
}

function dryRunForm(views, agreements) {
  const dataset = select("dry-dataset", views.map((v) => v.dataset.id), views[0] && views[0].dataset.id);
  const policy = h("select", { name: "dry-policy" });
  const fill = () => {
    clear(policy);
    const v = views.find((x) => x.dataset.id === dataset.value);
    for (const o of v ? v.offers : []) policy.append(h("option", { value: `offer:${o["@id"]}` }, `offer ${short(o["@id"], 28)}`));
    for (const a of agreements.filter((x) => x.agreement.target === dataset.value)) {
      policy.append(h("option", { value: `agreement:${a.id}` }, `agreement with ${a.agreement.assignee} (${short(a.id, 20)})`));
    }
  };
  dataset.addEventListener("change", fill);
  fill();
  const assignee = h("input", { name: "dry-assignee", value: "bank-a", size: 12, required: true });
  const purpose = h("input", { name: "dry-purpose", value: "pre-loan-review", size: 16, required: true });
  const kind = select("dry-kind", ["score", "aggregate", "train", "transfer"], "score");
  const protocol = select("dry-protocol", [["", "(none)"], "ckks", "paillier", "additive"], "ckks");
  const model = select("dry-model", [["analyst-held", "analyst-held"], ["trained", "trained jointly"], ["approved", "approved"]], "analyst-held");
  const cohort = h("input", { name: "dry-cohort", type: "number", min: 0, value: 100, size: 6 });
  const out = h("div", { class: "dry-run-result" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(out);
        const [which, id] = [policy.value.split(":")[0], policy.value.slice(policy.value.indexOf(":") + 1)];
        const body = { dataset: dataset.value, assignee: assignee.value, purpose: purpose.value, kind: kind.value, cohortSize: Number(cohort.value) };
        if (protocol.value) body.protocol = protocol.value;
        if (kind.value === "score") body.model = model.value;
        body[which] = id;
        try {
          const d = await post("/management/policy/dry-run", body);
          out.append(h("p", { class: "muted" }, `Evaluated the ${d.evaluated} ${short(d.policy, 40)}; nothing was consumed or recorded.`), explain(d.trace, { ...d, dry: true }));
        } catch (err) {
          out.append(h("p", { class: "error", role: "alert" }, errorText(err)));
        }
      },
    },
    h("p", { class: "muted" }, "Would this request be allowed? The node's own policy engine answers with its full trace, without consuming a use or writing to the ledger."),
    h("div", { class: "row" }, field("Dataset", dataset), field("Policy", policy), field("Member", assignee), field("Purpose", purpose), field("Computation", kind), field("Protocol", protocol), field("Weights", model), field("Entities", cohort)),
    h("button", { type: "submit" }, "Dry run"),
    out,
  );
  return form;
}

function ask(question) {
  const reason = window.prompt(question, "");
  return reason === null ? null : reason.trim() || "by the provider's staff";
}

function agreementsCard(me, agreements, negotiations, held, refresh) {
  const provided = negotiations.filter((n) => n.role === "provider");
  const granted = agreements.filter((a) => a.agreement.assigner === me.node);
  const act = async (path, body) => {
    await post(path, body);
    await refresh();
  };
  const standingActions = (a) => {
    if (a.state !== "FINALIZED" || a.standing === "terminated") return "";
    const out = [];
    const button = (action, label, cls) =>
      h("button", { type: "button", class: cls, "aria-label": `${label} agreement with ${a.agreement.assignee}`, onclick: () => { const reason = ask(`${label} this agreement with ${a.agreement.assignee}? Reason:`); if (reason !== null) act(`/management/agreements/${enc(a.id)}/${action}`, { reason }); } }, label);
    if (a.standing === "suspended") out.push(button("resume", "Resume", "secondary"));
    else out.push(button("suspend", "Suspend", "secondary"));
    out.push(" ", button("terminate", "Terminate", "danger"));
    return out;
  };
  const mode = select("grant-mode", [["auto", "auto: every request that meets the offer"], ["policy", "policy: members the policy names"], ["staff", "staff: every request waits for approval"]], "auto");
  return card(
    "Agreements",
    h("h3", {}, "Pending approvals"),
    table(
      [
        { label: "member", value: (x) => x.consumer },
        { label: "dataset", value: (x) => x.datasetId },
        { label: "offer", value: (x) => h("code", { title: x.offerId }, short(x.offerId, 18)) },
        { label: "held since", value: (x) => when(x.since) },
        {
          label: "",
          value: (x) => [
            h("button", { type: "button", "aria-label": `Approve the request of ${x.consumer}`, onclick: () => act(`/management/grants/pending/${enc(x.id)}/approve`) }, "Approve"),
            " ",
            h("button", { type: "button", class: "danger", "aria-label": `Reject the request of ${x.consumer}`, onclick: () => { const reason = ask(`Reject ${x.consumer}'s request? Reason (sent to them):`); if (reason !== null) act(`/management/grants/pending/${enc(x.id)}/reject`, { reason }); } }, "Reject"),
          ],
        },
      ],
      held,
      { empty: "No request waiting." },
    ),
    h("div", { class: "row" }, field("How requests are granted", mode), h("button", { type: "button", class: "secondary", onclick: async () => { await api("PUT", "/management/grants/mode", { mode: mode.value }); await refresh(); } }, "Set")),
    h("h3", {}, "Signed"),
    table(
      [
        { label: "agreement", value: (a) => h("code", { title: a.id }, short(a.id, 22)) },
        { label: "member", value: (a) => a.agreement.assignee },
        { label: "dataset", value: (a) => a.agreement.target },
        { label: "state", value: (a) => badge(a.state, a.authorises ? "ok" : "warn") },
        { label: "standing", value: (a) => badge(a.standing || "active", a.standing === "active" || !a.standing ? "ok" : "bad") },
        { label: "", value: standingActions },
      ],
      granted,
      { empty: "No agreement yet." },
    ),
    h("h3", {}, "Negotiations"),
    table(
      [
        { label: "with", value: (n) => n.counterparty },
        { label: "dataset", value: (n) => n.datasetId },
        { label: "state", value: (n) => n.state },
        {
          label: "",
          value: (n) =>
            ["FINALIZED", "TERMINATED"].includes(n.state)
              ? ""
              : h("button", { type: "button", class: "danger", onclick: () => act(`/management/negotiations/${enc(n.id)}/terminate`, { reason: "terminated by the provider's staff" }) }, "Terminate"),
        },
      ],
      provided,
      { empty: "No negotiation." },
    ),
  );
}

function hourKey(iso) {
  return String(iso || "").slice(0, 13).replace("T", " ") + "h";
}

function usageCard(report) {
  const byHour = new Map();
  for (const e of [...report.entries].reverse()) {
    const k = hourKey(e.time);
    if (!byHour.has(k)) byHour.set(k, { label: k.slice(11), a: 0, b: 0 });
    byHour.get(k)[e.allowed ? "a" : "b"] += 1;
  }
  const budgets = table(
    [
      { label: "agreement", value: (b) => h("code", { title: b.agreement }, short(b.agreement, 20)) },
      { label: "member", value: (b) => b.member },
      { label: "dataset", value: (b) => b.dataset },
      { label: "used", num: true, value: (b) => b.uses },
      { label: "limit", num: true, value: (b) => (b.limit ?? "none") },
      { label: "left", num: true, value: (b) => (b.limit == null ? "–" : Math.max(0, b.limit - b.uses)) },
      { label: "consumption", value: (b) => meter(b.uses, b.limit) },
      { label: "ε spent / limit", num: true, value: (b) => (b.epsilon ? `${b.epsilon.spent.toFixed(2)} / ${b.epsilon.limit ?? "–"}` : "–") },
    ],
    report.budgets,
    { empty: "No use yet." },
  );
  const entries = table(
    [
      { label: "#", num: true, value: (e) => e.index },
      { label: "time", value: (e) => when(e.time) },
      { label: "", value: (e) => badge(e.allowed ? "use" : "refused", e.allowed ? "ok" : "bad") },
      { label: "member", value: (e) => e.member },
      { label: "purpose", value: (e) => e.purpose || "" },
      { label: "computation", value: (e) => e.kind || "" },
      { label: "protocol", value: (e) => e.protocol || "" },
      { label: "dataset", value: (e) => e.dataset || "" },
      { label: "entities", num: true, value: (e) => (e.entities ?? "") },
      { label: "why", value: (e) => (e.allowed ? "" : h("details", {}, h("summary", {}, e.reason || "refused"), explain(e.trace, { allowed: false, reason: e.reason }))) },
    ],
    report.entries,
    { empty: "No use or refusal of this node's data yet." },
  );
  return card(
    "Usage of this node's data",
    h("h3", {}, "Uses and refusals per hour (UTC)"),
    byHour.size ? bars([...byHour.values()], { title: "uses and refusals per hour", aLabel: "uses", bLabel: "refusals", width: Math.min(900, 120 + 60 * byHour.size) }) : h("p", { class: "muted" }, "Nothing yet."),
    h("h3", {}, "Budgets per agreement"),
    budgets,
    h("h3", {}, `Every use and refusal (newest first; ledger size ${report.ledgerSize})`),
    entries,
  );
}

function modelsCard(models, pending, refresh) {
  const decide = async (action, m) => {
    const reason = action === "reject" ? window.prompt(`Reject ${m.owner}'s model ${m.model}? Reason:`, "") : null;
    if (action === "reject" && reason === null) return;
    await post(`/management/models/submissions/${action}`, { owner: m.owner, model: m.model, reason: reason || null });
    await refresh();
  };
  return card(
    "Models",
    h("h3", {}, "Pending approvals"),
    h("p", { class: "muted" }, "Model parts members submitted for this node's columns, measured on its rows. Approving stores them as the member's party-held model."),
    table(
      [
        { label: "member", value: (m) => m.owner },
        { label: "model", value: (m) => h("code", {}, m.model) },
        { label: "dataset", value: (m) => m.dataset },
        { label: "columns", value: (m) => m.columns.join(", ") },
        { label: "measured", value: (m) => Object.entries(m.stats || {}).map(([k, v]) => `${k} ${Number(v).toPrecision(3)}`).join(", ") },
        {
          label: "",
          value: (m) => [
            h("button", { type: "button", "aria-label": `Approve ${m.model} of ${m.owner}`, onclick: () => decide("approve", m) }, "Approve"),
            " ",
            h("button", { type: "button", class: "danger", "aria-label": `Reject ${m.model} of ${m.owner}`, onclick: () => decide("reject", m) }, "Reject"),
          ],
        },
      ],
      pending,
      { empty: "No submission waiting." },
    ),
    h("h3", {}, "Approved and trained models"),
    table(
      [
        { label: "owner", value: (m) => m.owner },
        { label: "model", value: (m) => h("code", {}, m.model) },
        { label: "source", value: (m) => badge(m.source) },
        { label: "columns", value: (m) => Object.keys(m.weights || {}).join(", ") },
        { label: "sha256", value: (m) => h("code", { title: m.sha256 }, short(m.sha256, 12)) },
      ],
      models,
      { empty: "No model stored here yet." },
    ),
  );
}

function consentCard() {
  const id = h("input", { name: "consent-id", size: 30, required: true });
  const out = h("div", { role: "status" });
  return card(
    "Consents",
    h("p", { class: "muted" }, "Look up a data subject's consent by its id (consents are registered with the management API)."),
    h(
      "form",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          clear(out);
          try {
            const c = await get(`/management/consents/${enc(id.value)}`);
            out.append(table([{ label: "field", value: (r) => r[0] }, { label: "value", value: (r) => String(r[1]) }], Object.entries(c)));
          } catch (err) {
            out.append(h("p", { class: "error" }, errorText(err)));
          }
        },
      },
      h("div", { class: "row" }, field("Consent id", id), h("button", { type: "submit", class: "secondary" }, "Look up")),
    ),
    out,
  );
}

export async function renderProvider(root, me) {
  root.append(h("h1", {}, `Provider · ${me.node}`));
  const catalogBox = h("div");
  const dryBox = h("div");
  const agreementsBox = h("div");
  const usageBox = h("div");
  const modelsBox = h("div");
  const refresh = async () => {
    const summaries = await get("/management/datasets");
    const views = await Promise.all(summaries.map((s) => get(`/management/datasets/${enc(s.id)}`)));
    const [agreements, negotiations, usage] = await Promise.all([get("/management/agreements"), get("/management/negotiations"), get("/management/usage")]);
    // the model routes come with approved model parts; an older node without them shows none
    const [models, pending, held] = await Promise.all([get("/management/models").catch(() => []), get("/management/models/submissions?state=pending").catch(() => []), get("/management/grants/pending").catch(() => [])]);
    clear(catalogBox).append(views.length ? catalogTree(views) : h("p", { class: "muted" }, "Nothing published yet."));
    clear(dryBox).append(views.length ? dryRunForm(views, agreements) : h("p", { class: "muted" }, "Publish a dataset first."));
    clear(agreementsBox).append(agreementsCard(me, agreements, negotiations, held, refresh));
    await Promise.all(
      usage.budgets.map(async (b) => {
        b.epsilon = await get(`/management/budgets?member=${enc(b.member)}&dataset=${enc(b.dataset)}`).catch(() => null);
      }),
    );
    clear(usageBox).append(usageCard(usage));
    clear(modelsBox).append(modelsCard(models, pending, refresh));
  };
  root.append(
    card("Datasets by catalog", catalogBox),
    card("Policy dry run", dryBox),
    usageBox,
    agreementsBox,
    h("div", { class: "grid" }, modelsBox, consentCard()),
    card("Publish a dataset", publishForm(refresh)),
  );
  await refresh();
}
