// The operator: members with roles, keys and state; admission and revocation; the witness;
// the federated catalog.
import { enc, get, post } from "./api.js";
import { badge, card, clear, errorText, field, h, short, table, when } from "./dom.js";

function memberTable(members, refresh) {
  return table(
    [
      { label: "member", value: (m) => h("strong", {}, m.id) },
      { label: "roles", value: (m) => m.roles.join(", ") },
      { label: "state", value: (m) => badge(m.state, m.state === "admitted" ? "ok" : "bad") },
      { label: "key", value: (m) => h("span", { class: "mono", title: m.keyFingerprint }, short(m.keyFingerprint, 19)) },
      { label: "credential until", value: (m) => when(m.expiresAt).slice(0, 10) },
      { label: "cosigned", num: true, value: (m) => (m.cosignedSize ?? "–") },
      { label: "ledger now", num: true, value: (m) => (m.currentSize ?? "–") },
      { label: "lag", num: true, value: (m) => (m.lag ?? "–") },
      { label: "refused", num: true, value: (m) => m.refusedSubmissions },
      { label: "alarms", value: (m) => (m.alarms.length ? m.alarms.map((a) => h("div", { class: "warn" }, a)) : h("span", { class: "muted" }, "none")) },
      {
        label: "",
        value: (m) =>
          m.state === "admitted"
            ? h("button", { type: "button", class: "danger", "aria-label": `Revoke ${m.id}`, onclick: () => revoke(m.id, refresh) }, "Revoke")
            : "",
      },
    ],
    members,
    { empty: "No member admitted yet." },
  );
}

async function revoke(id, refresh) {
  const reason = window.prompt(`Revoke ${id}? Give a reason (it is recorded):`, "");
  if (reason === null) return;
  await post(`/operator/participants/${enc(id)}/revoke`, { reason: reason || "revoked by staff" });
  await refresh();
}

function admissionForm(refresh) {
  const identity = h("textarea", { rows: 7, name: "identity", required: true, placeholder: '{"id": "…", "roles": ["consumer"], "url": "…", "publicKey": "…", "ledgerVkey": "…"}' });
  const out = h("div", { role: "status" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        clear(out);
        try {
          const doc = JSON.parse(identity.value);
          const admitted = await post("/operator/participants", {
            id: doc.id,
            roles: (doc.roles || []).filter((r) => r !== "operator"),
            publicKey: doc.publicKey,
            url: doc.url,
            ledgerVkey: doc.ledgerVkey,
          });
          const token = h("textarea", { rows: 4, readonly: true, name: "credential", "aria-label": "Membership credential" });
          token.value = admitted.credential;
          out.append(
            h("p", { class: "ok" }, `${admitted.id} admitted as ${admitted.roles.join(", ")}. Hand this credential to its staff; they install it on their node's console (Node page).`),
            token,
          );
          identity.value = "";
          await refresh();
        } catch (err) {
          out.append(h("p", { class: "error", role: "alert" }, err instanceof SyntaxError ? "That is not JSON: paste the member's /identity document." : errorText(err)));
        }
      },
    },
    h("p", { class: "muted" }, "Paste the new member's identity (its node's /identity document, sent by its staff). Compare the key fingerprint with them by phone before admitting."),
    field("Member identity (JSON)", identity),
    h("button", { type: "submit" }, "Admit"),
    out,
  );
  return form;
}

export async function renderOperator(root, me) {
  root.append(h("h1", {}, `Operator · ${me.node}`));
  const members = h("div");
  const refresh = async () => {
    const list = await get("/operator/members");
    clear(members).append(memberTable(list, refresh));
  };
  const catalog = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  root.append(
    card("Members", h("p", { class: "muted" }, "Each member's credential, key fingerprint and what the witness knows of its ledger: its latest cosigned checkpoint, how far its ledger has grown since (lag), checkpoints refused as forks, and alarms."), members),
    h(
      "div",
      { class: "grid" },
      card("Admit a member", admissionForm(refresh)),
      card("Federated catalog", catalog),
    ),
  );
  await refresh();
  try {
    const fed = await get("/management/catalog");
    clear(catalog).append(
      table(
        [
          { label: "provider", value: (r) => r.provider },
          { label: "dataset", value: (r) => h("code", {}, r.dataset) },
          { label: "title", value: (r) => r.title },
          { label: "tier", value: (r) => r.tier },
          { label: "max grade", num: true, value: (r) => r.maxGrade },
          { label: "offers", num: true, value: (r) => r.offers.length },
        ],
        fed.rows,
        { empty: "No dataset published yet." },
      ),
    );
  } catch (err) {
    clear(catalog).append(h("p", { class: "error" }, errorText(err)));
  }
}
