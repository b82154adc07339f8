//! The raw metrics as CSV, for spreadsheets and pandas: `metrics.csv` (one row per
//! deployment × peer × round, every scalar `RoundMetrics` field) and `invocations.csv`
//! (one row per function call). Columns come from the metrics' own serialisation, so a
//! field added to the schema appears without touching this module.

use serde::Serialize;
use serde_json::Value;

use super::super::runs::DeploymentRun;

/// `metrics.csv`: leading columns `deployment`, `peer`, `instance_type`, then every
/// scalar field of `RoundMetrics` in name order, then `invocation_count` and
/// `missing_ranks` (`;`-separated).
pub fn metrics_csv(runs: &[DeploymentRun]) -> String {
    let mut rows = Vec::new();
    for run in runs {
        for peer in &run.peers {
            for m in &peer.rounds {
                let mut fields = scalars(m);
                fields.push(("invocation_count".into(), m.invocations.len().to_string()));
                fields.push((
                    "missing_ranks".into(),
                    m.missing_ranks
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(";"),
                ));
                let lead = vec![
                    ("deployment".to_string(), run.name.clone()),
                    ("peer".to_string(), peer.rank.to_string()),
                    ("instance_type".to_string(), peer.instance_type.clone()),
                ];
                rows.push([lead, fields].concat());
            }
        }
    }
    table(rows, &metrics_header())
}

/// `invocations.csv`: `deployment`, `peer`, `round`, then every field of
/// `InvocationRecord` in name order.
pub fn invocations_csv(runs: &[DeploymentRun]) -> String {
    let mut rows = Vec::new();
    for run in runs {
        for peer in &run.peers {
            for m in &peer.rounds {
                for inv in &m.invocations {
                    let lead = vec![
                        ("deployment".to_string(), run.name.clone()),
                        ("peer".to_string(), peer.rank.to_string()),
                        ("round".to_string(), m.round.to_string()),
                    ];
                    rows.push([lead, scalars(inv)].concat());
                }
            }
        }
    }
    table(rows, &invocations_header())
}

/// The header of `metrics.csv` (also written when there are no rows).
fn metrics_header() -> Vec<String> {
    let mut h = vec!["deployment".into(), "peer".into(), "instance_type".into()];
    h.extend(
        scalars(&peerless_runtime::metrics::RoundMetrics::default())
            .into_iter()
            .map(|(k, _)| k),
    );
    h.push("invocation_count".into());
    h.push("missing_ranks".into());
    h
}

fn invocations_header() -> Vec<String> {
    let mut h = vec!["deployment".into(), "peer".into(), "round".into()];
    h.extend(
        scalars(&peerless_runtime::metrics::InvocationRecord::default())
            .into_iter()
            .map(|(k, _)| k),
    );
    h
}

/// The scalar fields of `value`'s JSON object, by name, as CSV text (`null` → empty).
fn scalars<T: Serialize>(value: &T) -> Vec<(String, String)> {
    let Ok(Value::Object(map)) = serde_json::to_value(value) else {
        return Vec::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::String(s) => s,
                Value::Array(_) | Value::Object(_) => return None,
            };
            Some((k, text))
        })
        .collect()
}

/// Writes rows under `header`, matching cells to columns by name (missing → empty).
fn table(rows: Vec<Vec<(String, String)>>, header: &[String]) -> String {
    let mut out = line(header.iter().map(String::as_str));
    for row in rows {
        let cells = header.iter().map(|col| {
            row.iter()
                .find(|(k, _)| k == col)
                .map_or("", |(_, v)| v.as_str())
        });
        out.push_str(&line(cells));
    }
    out
}

fn line<'a>(cells: impl Iterator<Item = &'a str>) -> String {
    let mut out = cells.map(quote).collect::<Vec<_>>().join(",");
    out.push('\n');
    out
}

/// Quotes a cell when it holds a comma, a quote or a line break (RFC 4180).
fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}
