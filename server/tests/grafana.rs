//! `examples/grafana/keygate.json` is a dashboard in Grafana's JSON model,
//! importable as it is: its shape is checked here (the queries themselves
//! run against a real Prometheus in `tests/prometheus.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;

use serde_json::Value;

fn dashboard() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/grafana/keygate.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_dashboard_has_grafanas_shape() {
    let d = dashboard();
    assert_eq!(d["title"], "keygate");
    assert!(d["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(d["id"].is_null(), "an importable dashboard has no id");
    // The data source is an input, chosen at import.
    let input = &d["__inputs"][0];
    assert_eq!(input["name"], "DS_PROMETHEUS");
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");
    assert!(d["templating"]["list"].is_array());
    assert!(d["time"]["from"].is_string() && d["time"]["to"].is_string());

    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut ids = HashSet::new();
    let mut cells: Vec<(u64, u64, u64, u64)> = Vec::new();
    let mut exprs = String::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "id of `{title}` repeats"
        );
        assert!(
            ["timeseries", "stat", "gauge", "table"].contains(&p["type"].as_str().unwrap()),
            "{title}"
        );
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "`{title}` off the 24-column grid"
        );
        for &(ox, oy, ow, oh) in &cells {
            let apart = x + w <= ox || ox + ow <= x || y + h <= oy || oy + oh <= y;
            assert!(apart, "`{title}` overlaps another panel");
        }
        cells.push((x, y, w, h));
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap().to_owned()));
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("keygate_"), "{expr}");
            exprs.push_str(expr);
        }
    }
    // What the issue asks the dashboard to show.
    for metric in [
        "keygate_authorize_decisions_total",
        "keygate_authorize_duration_seconds_bucket",
        "keygate_follower_lag_seq",
        "keygate_connections_open",
    ] {
        assert!(exprs.contains(metric), "no panel shows {metric}");
    }
}
