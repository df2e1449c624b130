// A policy trace in plain words: what refused, and what to change.
import { h, table } from "./dom.js";

const HINTS = {
  purpose: (s) => `Declare a purpose the policy allows${list(s.right_operand ?? s.rightOperand)}.`,
  computation: (s) => `Ask for a computation the policy allows${list(s.right_operand ?? s.rightOperand)}.`,
  protocol: (s) => `Choose a protocol the policy allows${list(s.right_operand ?? s.rightOperand)}.`,
  output: (s) => `Ask for an output the policy allows${list(s.right_operand ?? s.rightOperand)}.`,
  count: () => "The agreement's uses are spent: negotiate a new agreement or ask the provider for a larger count.",
  minCohort: (s) => `Name at least ${val(s.right_operand ?? s.rightOperand)} entities.`,
  consent: () => "Every entity needs the data subject's consent for this purpose: register consents or leave those entities out.",
  dateTime: () => "The request falls outside the policy's time window.",
  assignee: () => "The policy names another member: only that member may use it.",
  agreement: () => "Use the agreement the provider signed with you for this dataset.",
  role: (s) => `Your membership role must be${list(s.right_operand ?? s.rightOperand)}.`,
  model: (s) => `The weights must be of a kind the provider allows${list(s.right_operand ?? s.rightOperand)}; on computation-only data analyst-held weights need the provider's explicit opt-in.`,
  grade: () => "The dataset's grades forbid this use at its tier: ask the provider.",
};

function val(v) {
  if (v && typeof v === "object" && "@value" in v) return v["@value"];
  return v;
}

function list(v) {
  const x = val(v);
  if (Array.isArray(x)) return `: ${x.join(", ")}`;
  return x === undefined || x === null ? "" : `: ${x}`;
}

function fmt(v) {
  const x = val(v);
  if (x === undefined || x === null) return "";
  return typeof x === "object" ? JSON.stringify(x) : String(x);
}

export function explain(trace, { allowed, reason, peer, dry = false } = {}) {
  const steps = trace || [];
  const hints = [];
  const add = (text) => {
    if (text && !hints.includes(text)) hints.push(text);
  };
  for (const s of steps.filter((x) => x.blocking && x.rule === "prohibition")) {
    const operand = s.left_operand ?? s.leftOperand ?? "";
    add(`The provider prohibits ${operand} ${fmt(s.right_operand ?? s.rightOperand)}: no agreement on this offer allows it.`);
  }
  // what every permission still needs (a permission grants only if all its constraints hold)
  for (const s of steps.filter((x) => !allowed && x.outcome === "violated" && x.rule !== "prohibition")) {
    const operand = s.left_operand ?? s.leftOperand ?? "";
    add(HINTS[operand] ? HINTS[operand](s) : s.message);
  }
  const verdict = allowed
    ? h("div", { class: "verdict ok", role: "status" }, h("strong", {}, `${dry ? "Would be allowed" : "Allowed"}${reason ? `: ${reason}` : ""}`))
    : h(
        "div",
        { class: "verdict bad", role: "alert" },
        h("strong", {}, `${dry ? "Would be refused" : "Refused"}${peer ? ` by ${peer}` : ""}: ${reason || "see the trace"}`),
        hints.length ? h("ul", {}, hints.map((t) => h("li", {}, `What to change: ${t}`))) : null,
      );
  const rows = table(
    [
      { label: "rule", value: (s) => `${s.rule}${s.index !== null && s.index !== undefined ? ` #${s.index}` : ""}` },
      { label: "operand", value: (s) => s.left_operand ?? s.leftOperand ?? "" },
      { label: "operator", value: (s) => s.operator ?? "" },
      { label: "policy says", value: (s) => fmt(s.right_operand ?? s.rightOperand) },
      { label: "request has", value: (s) => fmt(s.seen) },
      { label: "outcome", value: (s) => h("span", { class: s.blocking ? "bad" : s.outcome === "satisfied" ? "ok" : "muted" }, s.outcome + (s.blocking ? " (blocking)" : "")) },
      { label: "in words", value: (s) => s.message ?? "" },
    ],
    steps,
    { empty: "No trace." },
  );
  return h("div", { class: "explained" }, verdict, h("details", { open: !allowed }, h("summary", {}, `Evaluation trace (${steps.length} steps)`), rows));
}
