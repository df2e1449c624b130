// This node: identity, membership, and its ledger's witness.
import { get, post, put } from "./api.js";
import { card, errorText, field, h, table, when } from "./dom.js";

export async function renderNode(root) {
  const me = await get("/identity");
  root.append(h("h1", {}, `Node ${me.id}`));
  const facts = [
    ["roles", me.roles.join(", ")],
    ["URL", me.url],
    ["public key", me.publicKey],
    ["ledger key", me.ledgerVkey],
    ["operator", me.operator || "none yet"],
    ["membership", me.admitted ? "admitted" : "not admitted"],
  ];
  const tokenBox = h("textarea", { rows: 4, name: "credential", required: true });
  const out = h("p", { role: "status" });
  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const done = await put("/management/credential", { token: tokenBox.value.trim() });
          out.className = "ok";
          out.textContent = `Credential installed: ${done.id} is a member until ${when(done.expiresAt)}.`;
          tokenBox.value = "";
        } catch (err) {
          out.className = "error";
          out.textContent = errorText(err);
        }
      },
    },
    field("Membership credential from the operator", tokenBox),
    h("button", { type: "submit" }, "Install credential"),
    out,
  );
  const cp = h("p", { role: "status" });
  const witness = h(
    "button",
    {
      type: "button",
      class: "secondary",
      onclick: async () => {
        try {
          const done = await post("/management/ledger/checkpoint");
          cp.textContent = done.cosigned ? "Checkpoint cosigned by the operator's witness." : "Checkpoint signed; the witness did not cosign it (see the node's log).";
          cp.className = done.cosigned ? "ok" : "error";
        } catch (err) {
          cp.className = "error";
          cp.textContent = errorText(err);
        }
      },
    },
    "Have the ledger witnessed now",
  );
  root.append(
    h(
      "div",
      { class: "grid" },
      card("Identity", table([{ label: "what", value: (r) => r[0] }, { label: "value", value: (r) => h("span", { class: "mono" }, r[1]) }], facts)),
      card("Membership", h("p", { class: "muted" }, "The operator's staff admit this node and hand over a signed credential; install it here. The node checks it against the operator's key first."), form, h("h3", {}, "Ledger"), witness, cp),
    ),
  );
}
