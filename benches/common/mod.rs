//! Helpers shared by the benchmarks: running a Python baseline script and reading the
//! medians criterion measured in this run.

use std::process::Command;

/// Runs `benches/python/<script>` with python3 and returns its `key value` lines, or `None`
/// when python3 is missing or the script fails.
pub(crate) fn python_baseline(script: &str) -> Option<Vec<(String, f64)>> {
    let path = format!("{}/benches/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3").arg(&path).output().ok()?;
    if !output.status.success() {
        eprintln!(
            "python baseline {script} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let values: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect();
    println!("Python baseline ({script}):");
    for (key, value) in &values {
        println!("  {key} {value}");
    }
    Some(values)
}

/// Looks a value up in a baseline's lines.
pub(crate) fn baseline_value(baseline: Option<&[(String, f64)]>, key: &str) -> Option<f64> {
    baseline?.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// The median of a benchmark of this run, in ns, from criterion's estimates file.
pub(crate) fn median_ns(path: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_owned());
    let text =
        std::fs::read_to_string(format!("{dir}/criterion/{path}/new/estimates.json")).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let key = "\"point_estimate\":";
    let point = &median[median.find(key)? + key.len()..];
    let end = point.find([',', '}'])?;
    point[..end].trim().parse().ok()
}
