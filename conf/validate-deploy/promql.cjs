// Node half of conf/validate-deploy.sh (the promql check): parses every PromQL
// expression with Prometheus' own grammar and checks metric and label names
// against conf/prometheus/metric-names.txt. Input: the JSON list from
// `checks.py exprs` on stdin. The driver runs it from the repository root with
// NODE_PATH set to the tools' npm prefix; CommonJS because ES modules ignore
// NODE_PATH.
const fs = require('fs');
const { parser } = require('@prometheus-io/lezer-promql');
const exprs = JSON.parse(fs.readFileSync(0, 'utf8'));
const errors = [];
const metrics = {};
// metric-names.txt is also read by the Rust test of what /metrics exports:
// keep its shape strict (name type labels, Prometheus naming conventions).
for (let line of fs.readFileSync('conf/prometheus/metric-names.txt', 'utf8').split('\n')) {
  line = line.split('#')[0].trim();
  if (!line) continue;
  const fields = line.split(/\s+/);
  const [name, type, labels] = fields;
  const where = `metric-names.txt: ${name}`;
  if (fields.length !== 3) errors.push(`${where}: expected "name type labels", got ${JSON.stringify(line)}`);
  if (!/^switchyard_[a-z][a-z0-9_]*$/.test(name)) errors.push(`${where}: names start with switchyard_ and use [a-z0-9_]`);
  if (!['counter', 'gauge', 'histogram'].includes(type)) errors.push(`${where}: type must be counter, gauge or histogram`);
  if ((type === 'counter') !== name.endsWith('_total')) errors.push(`${where}: counters, and only counters, end in _total`);
  if (name in metrics) errors.push(`${where}: listed twice`);
  if (labels !== '-' && !/^[a-z_]+(,[a-z_]+)*$/.test(labels || '')) errors.push(`${where}: labels are comma-separated names, or -`);
  metrics[name] = { type, labels: !labels || labels === '-' ? [] : labels.split(',') };
}
const TARGET = ['job', 'instance'];          // added by Prometheus to every series
const BUILTIN = { up: [] };                  // Prometheus' own series
function series(name) {
  if (name in BUILTIN) return BUILTIN[name];
  if (metrics[name] && metrics[name].type !== 'histogram') return metrics[name].labels;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    const base = name.slice(0, -suffix.length);
    if (name.endsWith(suffix) && metrics[base] && metrics[base].type === 'histogram')
      return metrics[base].labels.concat(suffix === '_bucket' ? ['le'] : []);
  }
  return null;
}
const used = new Set();
for (const e of exprs) {
  const src = e.expr;
  const tree = parser.parse(src);
  const selectors = [];
  const grouping = [];
  const top = tree.topNode.firstChild;
  let bad = false;
  tree.iterate({
    enter(n) {
      if (n.type.isError) {
        errors.push(`${e.where}: PromQL syntax error at ${n.from}: ${JSON.stringify(src.slice(Math.max(0, n.from - 20), n.from + 20))}`);
        bad = true;
      }
      if (n.name === 'VectorSelector') {
        const id = n.node.getChild('Identifier');
        const matchers = [];
        const lm = n.node.getChild('LabelMatchers');
        if (lm) lm.cursor().iterate((m) => { if (m.name === 'LabelName') matchers.push(src.slice(m.from, m.to)); });
        selectors.push({ name: id ? src.slice(id.from, id.to) : null, matchers });
      }
      if (n.name === 'GroupingLabels') {
        n.node.cursor().iterate((m) => { if (m.name === 'LabelName') grouping.push(src.slice(m.from, m.to)); });
      }
    },
  });
  if (bad) continue;
  const allowed = new Set(TARGET);
  for (const s of selectors) {
    if (!s.name) { errors.push(`${e.where}: selector without a metric name`); continue; }
    const labels = series(s.name);
    if (!labels) { errors.push(`${e.where}: unknown metric ${s.name} (not in metric-names.txt)`); continue; }
    used.add(metrics[s.name] ? s.name : s.name.replace(/_(bucket|sum|count)$/, ''));
    for (const l of labels) allowed.add(l);
    for (const m of s.matchers) {
      if (!labels.includes(m) && !TARGET.includes(m)) errors.push(`${e.where}: ${s.name} has no label ${m}`);
    }
  }
  for (const l of grouping.concat(e.extra_labels || [])) {
    if (!allowed.has(l)) errors.push(`${e.where}: label ${l} is on none of the metrics it uses`);
  }
  // Legend {{label}}s must survive the outermost aggregation.
  if (e.legend && top) {
    let node = top;
    if (node.name === 'FunctionCall' && src.slice(node.from, node.to).startsWith('histogram_quantile')) {
      const body = node.getChild('FunctionCallBody');
      node = body && body.lastChild;
    }
    if (node && node.name === 'AggregateExpr') {
      const mod = node.getChild('AggregateModifier');
      const kept = [];
      if (mod && mod.getChild('By')) mod.cursor().iterate((m) => { if (m.name === 'LabelName') kept.push(src.slice(m.from, m.to)); });
      for (const [, l] of e.legend.matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
        if (!kept.includes(l)) errors.push(`${e.where}: legend uses {{${l}}}, which the query aggregates away`);
      }
    }
  }
}
for (const name of Object.keys(metrics)) {
  if (!used.has(name)) errors.push(`${name}: exported but used by neither the alerts nor the dashboard`);
}
for (const m of errors) console.log('  ' + m);
process.exit(errors.length ? 1 : 0);
