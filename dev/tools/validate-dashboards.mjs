// Static checks of the Grafana dashboards in grafana/ (run by dev/lint-dashboards):
//
//  1. schema: the classic dashboard JSON against a JSON Schema generated from @grafana/schema's
//     raw/dashboard/x `Dashboard` TypeScript type (dev/install-tools makes it); with the strict schema
//     a property the types do not declare is an error, which catches typos.
//  2. Flightline's conventions: uid = file name, tag "flightline", a `datasource` variable of type
//     datasource (prometheus) and every datasource reference `${datasource}` (never a UID), unique
//     panel ids and titles, gridPos inside the 24 columns without overlaps, a description on every
//     panel, targets with unique refIds and an expr, links to /d/<uid> only to dashboards linted here.
//  3. the metrics contract: every metric an expr names is one the services, the operator or the
//     PrometheusRule export (CONTRACT below), or `up` / `ALERTS`.
//  4. the allowlist of queries that may be empty (grafana/queries-may-be-empty.txt) names existing
//     dashboard/panel/refId triples and says why.
//  5. every PromQL expr (and label_values() variable query) is written to a rules file, one group per
//     query named "<uid> / <panel title> / <refId>", for `promtool check rules` (dev/lint-dashboards).
//
// usage: node validate-dashboards.mjs --tools DIR [--schema strict|lenient|FILE] --rules-out FILE
//                                     [--allowlist FILE] dashboard.json...
// The npm packages (ajv, ajv-formats) and the generated schema live in DIR
// ($FLIGHTLINE_CACHE/tools/node), not in the repository.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

// ---- arguments -----------------------------------------------------------------------------------
const args = process.argv.slice(2);
const opt = { schema: "strict" };
const files = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (["--tools", "--schema", "--rules-out", "--allowlist"].includes(a)) {
    if (i + 1 >= args.length) die(`${a} needs a value`);
    opt[a.slice(2).replace("-out", "Out")] = args[++i];
  } else if (a.startsWith("--")) die(`unknown option ${a}`);
  else files.push(a);
}
function die(msg) { console.error(`validate-dashboards: ${msg}`); process.exit(2); }
if (!opt.tools) die("--tools DIR is required (dev/install-tools installs it)");
if (!opt.rulesOut) die("--rules-out FILE is required");
if (!files.length) die("no dashboards given");
const schemaPath = ["strict", "lenient"].includes(opt.schema)
  ? path.join(opt.tools, `dashboard.${opt.schema}.schema.json`) : opt.schema;
if (!fs.existsSync(schemaPath)) die(`${schemaPath} missing: run dev/install-tools`);

const require = createRequire(path.join(path.resolve(opt.tools), "package.json"));
const Ajv = require("ajv").default ?? require("ajv");
const addFormats = require("ajv-formats").default ?? require("ajv-formats");

// ---- the metrics contract ------------------------------------------------------------------------
// Keep in step with the services (services/*/src), the operator (operator/src/telemetry.rs) and the
// recording rules of the PrometheusRule the operator generates.
const histogram = (n) => [`${n}_bucket`, `${n}_sum`, `${n}_count`];
const CONTRACT = new Set([
  ...["ingest", "sink", "query", "predict"].flatMap((s) => [
    `flightline_${s}_http_requests_total`, ...histogram(`flightline_${s}_http_request_duration_seconds`)]),
  "flightline_ingest_records_accepted_total", "flightline_ingest_records_rejected_total",
  "flightline_ingest_produce_errors_total",
  "flightline_sink_rows_total", "flightline_sink_dead_letters_total", ...histogram("flightline_sink_batch_size"),
  ...histogram("flightline_sink_insert_duration_seconds"), "flightline_sink_insert_errors_total",
  "flightline_sink_consumer_lag", ...histogram("flightline_sink_freshness_seconds"),
  "flightline_predict_predictions_total", "flightline_predict_model_info", "flightline_predict_model_reloads_total",
  "flightline_query_cache_hits_total", "flightline_query_cache_misses_total",
  "flightline_query_cache_coalesced_waits_total", "flightline_query_cache_refreshes_total",
  "flightline_query_cache_entries", "flightline_query_cache_bytes",
  "flightline_operator_reconciliations_total", "flightline_operator_reconcile_errors_total",
  ...histogram("flightline_operator_reconcile_duration_seconds"), "flightline_operator_leader",
  "flightline_operator_reconciles_in_flight", "flightline_operator_pipeline_ready",
  "flightline:slo_requests:rate", "flightline:slo_errors:ratio", "flightline:slo_burn_rate",
  "flightline:slo_objective:ratio", "flightline:slo_error_budget_remaining:ratio",
  "up", "ALERTS",
]);
const PROMQL_WORDS = new Set([
  "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
  "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left", "group_right",
  "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN", "start", "end",
]);

// Metric names an expr selects: strings, label matchers, ranges and label lists removed first.
function metricNames(expr) {
  let e = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, "{}")
    .replace(/\[[^\]]*\]/g, "[]")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "$1()")
    .replace(/\$\{[^}]*\}|\$\w+|\[\[\w+\]\]/g, "0");
  const names = new Set();
  for (const m of e.matchAll(/(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()/g)) {
    if (!PROMQL_WORDS.has(m[1])) names.add(m[1]);
  }
  return [...names];
}

// ---- Grafana variables -> values PromQL accepts (for promtool only) -------------------------------
function substitute(expr, vars) {
  return expr
    .replace(/\$\{?__(rate_interval|interval|range)\}?(?![\w])/g, "5m")
    .replace(/\$\{?__(interval_ms|range_ms|range_s)\}?(?![\w])/g, "300")
    .replace(/\b(topk|bottomk|limitk|quantile)\s*\(\s*\$\{?\w+\}?/g, "$1(1")
    .replace(/\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]/g, (_, a, b, c) => {
      const name = a ?? b ?? c;
      return name in vars ? vars[name] : name.startsWith("__") ? "0" : "x";
    });
}
function variableValues(d) {
  const vars = {};
  for (const v of d.templating?.list ?? []) {
    let value = v.current?.value;
    if (Array.isArray(value)) value = value[0];
    if (value === "$__all") value = v.allValue ?? ".*";
    if (value === undefined && (v.type === "textbox" || v.type === "constant")) value = v.query;
    vars[v.name] = typeof value === "string" && value !== "" ? value : "x";
  }
  return vars;
}
// label_values(Q, label) -> count by (label) (Q); label_values(label) has no query to check.
function variableExpr(v) {
  const q = typeof v.query === "string" ? v.query : v.query?.query;
  const m = typeof q === "string" && q.trim().match(/^label_values\(\s*([\s\S]+)\s*,\s*(\w+)\s*\)$/);
  return m ? `count by (${m[2]}) (${m[1]})` : null;
}

// ---- checks --------------------------------------------------------------------------------------
const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
ajv.addSchema(JSON.parse(fs.readFileSync(schemaPath, "utf8")), "g");
const vDash = ajv.getSchema("g#/definitions/Dashboard");
const vPanel = ajv.getSchema("g#/definitions/Panel");
const vRow = ajv.getSchema("g#/definitions/RowPanel");
const DS = { type: "prometheus", uid: "${datasource}" };
const sameDS = (x) => x && typeof x === "object" && Object.keys(x).length === 2 && x.type === DS.type && x.uid === DS.uid;

let failedFiles = 0;
const queries = []; // {uid, title, refId, expr}
const dashboards = []; // {file, d}
const linkedUids = []; // {file, where, uid}

for (const f of files) {
  const problems = [];
  const bad = (where, msg) => problems.push(`${where || "/"}: ${msg}`);
  let d;
  try { d = JSON.parse(fs.readFileSync(f, "utf8")); } catch (e) {
    console.log(`FAIL ${f}: invalid JSON: ${e.message}`); failedFiles++; continue;
  }
  dashboards.push({ file: f, d });

  // 1. schema: the dashboard without its panels, then each panel as Panel or RowPanel
  const schemaErrors = (v, base) => (v.errors ?? []).forEach((e) =>
    bad(`${base}${e.instancePath}`, `schema: ${e.message} ${JSON.stringify(e.params)}`));
  if (!vDash({ ...d, panels: [] })) schemaErrors(vDash, "");
  const allPanels = []; // {p, where, inRow}
  const walk = (panels, base, inRow) => (panels ?? []).forEach((p, i) => {
    const where = `${base}/panels/${i}`;
    const isRow = p?.type === "row";
    const v = isRow ? vRow : vPanel;
    if (!v(isRow ? { ...p, panels: [] } : p)) schemaErrors(v, where);
    allPanels.push({ p, where, inRow });
    if (isRow) walk(p.panels, where, where);
  });
  walk(d.panels, "", null);

  // 2. conventions
  const uid = d.uid ?? "";
  if (!/^[a-z0-9-]{8,40}$/.test(uid)) bad("/uid", `"${uid}" is not a stable uid (8-40 of [a-z0-9-])`);
  if (path.basename(f) !== `${uid}.json`) bad("/uid", `file name should be ${uid}.json`);
  if (dashboards.some((o) => o.d !== d && o.d.uid === uid)) bad("/uid", `uid ${uid} also in another file`);
  if (!(d.tags ?? []).includes("flightline")) bad("/tags", 'missing the tag "flightline"');
  if ("__inputs" in d || "__requires" in d) bad("/", "__inputs/__requires: dashboards are provisioned, not imported");
  if (!d.title) bad("/title", "no title");
  const vars = d.templating?.list ?? [];
  const dsVar = vars.find((v) => v.name === "datasource");
  if (!dsVar || dsVar.type !== "datasource" || dsVar.query !== "prometheus")
    bad("/templating", 'needs a variable "datasource" of type datasource with query "prometheus"');
  const varNames = new Set();
  vars.forEach((v, i) => {
    if (varNames.has(v.name)) bad(`/templating/list/${i}`, `variable ${v.name} defined twice`);
    varNames.add(v.name);
    if (v.type === "query") {
      const e = variableExpr(v);
      if (!e) bad(`/templating/list/${i}`, `variable ${v.name}: expected a label_values(QUERY, LABEL) query`);
      else queries.push({ uid, title: `variable ${v.name}`, refId: "query", expr: e, where: `/templating/list/${i}`, file: f, dash: d });
    }
  });
  // every datasource reference anywhere is ${datasource}
  const dsWalk = (x, where) => {
    if (Array.isArray(x)) return x.forEach((y, i) => dsWalk(y, `${where}/${i}`));
    if (!x || typeof x !== "object") return;
    for (const [k, v] of Object.entries(x)) {
      if (k === "datasource" && !sameDS(v))
        bad(`${where}/datasource`, `must be {"type":"prometheus","uid":"\${datasource}"}, not ${JSON.stringify(v)}`);
      else dsWalk(v, `${where}/${k}`);
    }
  };
  dsWalk(d.panels, "/panels");
  dsWalk(d.templating, "/templating");
  dsWalk(d.annotations, "/annotations");
  // links to other dashboards
  const linkWalk = (x, where) => {
    if (Array.isArray(x)) return x.forEach((y, i) => linkWalk(y, `${where}/${i}`));
    if (!x || typeof x !== "object") return;
    for (const [k, v] of Object.entries(x)) {
      if (k === "url" && typeof v === "string") {
        const m = v.match(/\/d\/([\w-]+)/);
        if (m) linkedUids.push({ file: f, where: `${where}/url`, uid: m[1] });
      } else linkWalk(v, `${where}/${k}`);
    }
  };
  linkWalk(d, "");

  // panels: ids, titles, descriptions, grid, targets
  const ids = new Map();
  const titles = new Map();
  const cells = new Map(); // "scope x,y" -> where
  for (const { p, where, inRow } of allPanels) {
    if (!p || typeof p !== "object") { bad(where, "not an object"); continue; }
    if (ids.has(p.id)) bad(`${where}/id`, `id ${p.id} also used by ${ids.get(p.id)}`); else ids.set(p.id, where);
    if (typeof p.id !== "number") bad(`${where}/id`, "no numeric id");
    if (!p.title) bad(`${where}/title`, "no title");
    else if (titles.has(p.title)) bad(`${where}/title`, `title "${p.title}" also used by ${titles.get(p.title)}`);
    else titles.set(p.title, where);
    const g = p.gridPos;
    if (!g) bad(`${where}/gridPos`, "no gridPos");
    else {
      if (g.x < 0 || g.w < 1 || g.h < 1 || g.x + g.w > 24) bad(`${where}/gridPos`, `outside the 24-column grid: ${JSON.stringify(g)}`);
      // panels of a collapsed row keep their own coordinates
      const scope = inRow && allPanels.find((o) => o.where === inRow)?.p.collapsed ? inRow : "top";
      for (let x = g.x; x < g.x + g.w; x++) for (let y = g.y; y < g.y + g.h; y++) {
        const key = `${scope} ${x},${y}`;
        if (cells.has(key)) { bad(`${where}/gridPos`, `overlaps ${cells.get(key)} at x=${x} y=${y}`); y = Infinity; x = Infinity; }
        else cells.set(key, where);
      }
    }
    if (p.type === "row") continue;
    if (!p.description?.trim()) bad(`${where}/description`, `panel "${p.title}": no description (say what a person decides from it)`);
    const targets = p.targets ?? [];
    if (!targets.length) bad(`${where}/targets`, `panel "${p.title}": no targets`);
    const refIds = new Set();
    targets.forEach((t, i) => {
      const tw = `${where}/targets/${i}`;
      if (!t.refId) bad(`${tw}/refId`, "no refId");
      else if (refIds.has(t.refId)) bad(`${tw}/refId`, `refId ${t.refId} twice in panel "${p.title}"`);
      refIds.add(t.refId);
      if (typeof t.expr !== "string" || !t.expr.trim()) { bad(`${tw}/expr`, "no PromQL expr"); return; }
      queries.push({ uid, title: p.title, refId: t.refId, expr: t.expr, where: tw, file: f, dash: d });
    });
  }

  // 3. the metrics contract
  for (const q of queries.filter((q) => q.file === f)) {
    for (const name of metricNames(q.expr)) {
      if (!CONTRACT.has(name)) bad(q.where, `"${q.title}" ${q.refId}: metric ${name} is not in the metrics contract`);
    }
  }

  if (problems.length) {
    failedFiles++;
    console.log(`FAIL ${f}`);
    problems.forEach((p) => console.log(`  ${p}`));
  } else {
    console.log(`ok   ${f}: ${allPanels.length} panels, ${queries.filter((q) => q.file === f).length} queries`);
  }
}

// links between dashboards
const knownUids = new Set(dashboards.map((o) => o.d.uid));
let linkProblems = 0;
for (const l of linkedUids) {
  if (!knownUids.has(l.uid)) { console.log(`FAIL ${l.file}: ${l.where}: links to /d/${l.uid}, which no dashboard here has`); linkProblems++; }
}

// 4. the allowlist of queries that may return nothing
let allowProblems = 0;
if (opt.allowlist) {
  const lines = fs.readFileSync(opt.allowlist, "utf8").split("\n");
  lines.forEach((line, i) => {
    const s = line.trim();
    if (!s || s.startsWith("#")) return;
    const hash = s.indexOf("#");
    const [spec, why] = hash < 0 ? [s, ""] : [s.slice(0, hash).trim(), s.slice(hash + 1).trim()];
    const where = `${opt.allowlist}:${i + 1}`;
    const words = spec.split(/\s+/);
    if (!why) { console.log(`FAIL ${where}: no reason ("# why") for "${spec}"`); allowProblems++; }
    if (words.length < 3) { console.log(`FAIL ${where}: expected "<uid> <panel title> <refId>  # why"`); allowProblems++; return; }
    const [uid, refId, title] = [words[0], words.at(-1), words.slice(1, -1).join(" ")];
    const hit = queries.some((q) => q.uid === uid && q.refId === refId && q.title.replace(/\s+/g, " ") === title);
    if (!hit) { console.log(`FAIL ${where}: no query ${uid} / ${title} / ${refId} in the dashboards`); allowProblems++; }
  });
}

// 5. the rules file for promtool
const yaml = ["groups:"];
for (const q of queries) {
  yaml.push(`- name: ${JSON.stringify(`${q.uid} / ${q.title} / ${q.refId}`)}`, "  rules:",
    "  - record: dashboard_query", `    expr: ${JSON.stringify(substitute(q.expr, variableValues(q.dash)))}`);
}
fs.writeFileSync(opt.rulesOut, yaml.join("\n") + "\n");

const failed = failedFiles + (linkProblems ? 1 : 0) + (allowProblems ? 1 : 0);
console.log(`${files.length - failedFiles}/${files.length} dashboards passed` +
  `${linkProblems ? `, ${linkProblems} broken links` : ""}${allowProblems ? `, ${allowProblems} allowlist problems` : ""}` +
  ` (${queries.length} queries written to ${opt.rulesOut} for promtool)`);
process.exit(failed ? 1 : 0);
