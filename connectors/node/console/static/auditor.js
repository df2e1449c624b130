// The auditor (read-only): verify any member's ledger against the witness, check receipts,
// browse this node's ledger.
import { get, post } from "./api.js";
import { badge, card, clear, errorText, field, h, readFile, table, when } from "./dom.js";

function checks(list) {
  return table(
    [
      { label: "check", value: (c) => c.name },
      { label: "result", value: (c) => badge(c.ok ? "ok" : "FAILED", c.ok ? "ok" : "bad") },
      { label: "detail", value: (c) => c.detail },
    ],
    list,
  );
}

function witnessed(report) {
  const c = report.checks.find((x) => x.name === "witnessed checkpoints");
  return Boolean(c && c.ok && !/never witnessed/.test(c.detail));
}

function summary(body) {
  const keys = ["purpose", "analyst", "assignee", "dataset", "datasetId", "participant", "agreement", "reason", "size"];
  return keys.filter((k) => body[k] !== undefined && body[k] !== null).map((k) => `${k}: ${typeof body[k] === "object" ? JSON.stringify(body[k]) : body[k]}`).join(" · ");
}

export async function renderAuditor(root, me) {
  root.append(h("h1", {}, `Auditor · ${me.node}`));
  const peers = await get("/management/peers").catch(() => []);
  const ids = [me.node, ...peers.map((p) => p.id).filter((id) => id !== me.node)];
  const known = h("datalist", { id: "known-members" }, ids.map((id) => h("option", { value: id })));
  const member = h("input", { name: "verify-member", list: "known-members", value: ids[1] || ids[0], size: 16, required: true });
  const vkey = h("input", { name: "verify-vkey", size: 30, placeholder: "optional: pin its ledger key" });
  const verifyOut = h("div", { role: "status" });
  const verifyForm = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(verifyOut).append(h("p", { class: "muted" }, `Downloading and checking ${member.value}'s ledger…`));
        try {
          const body = { member: member.value };
          if (vkey.value) body.vkey = vkey.value;
          const r = await post("/management/verify/ledger", body);
          clear(verifyOut).append(
            h("div", { class: `verdict ${r.ok ? "ok" : "bad"}` }, h("strong", {}, r.ok ? `Verified: ${r.member}'s ledger, ${r.entries} entries. The root recomputed from the entries matches its signed checkpoint, the proofs check, ${witnessed(r) ? "and it extends every checkpoint the operator's witness cosigned." : "but it was never witnessed: only the node's own signature vouches for it."}` : `FAILED: ${r.member}'s ledger does not verify.`)),
            checks(r.checks),
            h("p", { class: "muted" }, `events: ${Object.entries(r.events).map(([k, n]) => `${k} ${n}`).join(", ")}`),
          );
        } catch (err) {
          clear(verifyOut).append(h("p", { class: "error", role: "alert" }, errorText(err)));
        }
      },
    },
    h("p", { class: "muted" }, "This node downloads every entry, recomputes the Merkle root, checks the signed checkpoint, inclusion proofs and the operator's witness cosignatures."),
    h("div", { class: "row" }, field("Member", member), known, field("Ledger key", vkey), h("button", { type: "submit" }, "Verify ledger")),
    verifyOut,
  );

  const receiptFile = h("input", { type: "file", name: "receipt", accept: ".json,application/json" });
  const receiptOut = h("div", { role: "status" });
  const receiptForm = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(receiptOut);
        try {
          const doc = JSON.parse(await readFile(receiptFile));
          const items = doc && doc.checkpoint ? [["receipt", doc]] : Object.entries(doc || {});
          for (const [name, receipt] of items) {
            const r = await post("/management/verify/receipt", receipt);
            receiptOut.append(
              h("h3", {}, `${name}: `, badge(r.ok ? "verified" : "FAILED", r.ok ? "ok" : "bad")),
              checks(r.checks),
              r.event ? h("p", { class: "muted" }, `${r.event.kind} at ${when(r.event.time)} · ${summary(r.event.body)}`) : null,
            );
          }
          if (!items.length) receiptOut.append(h("p", { class: "error" }, "No receipt in that file."));
        } catch (err) {
          receiptOut.append(h("p", { class: "error", role: "alert" }, err instanceof SyntaxError ? "That file is not JSON." : errorText(err)));
        }
      },
    },
    h("p", { class: "muted" }, "A receipt file as downloaded with a result (one receipt, or one per provider)."),
    h("div", { class: "row" }, field("Receipt file", receiptFile), h("button", { type: "submit" }, "Check receipts")),
    receiptOut,
  );

  const page = await get("/management/ledger/events?limit=100");
  const entries = table(
    [
      { label: "#", num: true, value: (e) => e.index },
      { label: "time", value: (e) => when(e.time) },
      { label: "event", value: (e) => h("code", {}, e.kind) },
      { label: "summary", value: (e) => h("details", {}, h("summary", {}, summary(e.body) || "details"), h("pre", {}, JSON.stringify(e.body, null, 2))) },
    ],
    page.events,
  );
  root.append(
    h("div", { class: "grid" }, card("Verify a member's ledger", verifyForm), card("Check a receipt", receiptForm)),
    card(`This node's ledger (${page.size} entries, newest first)`, entries),
  );
}
