//! Checks of the files in `deploy/`: the Prometheus alert rules load in `promtool` (Debian's
//! `prometheus` package, which `.ci/run` installs), and every metric the rules and the Grafana
//! dashboard name is one a service defines, so a renamed metric cannot leave an alert that never
//! fires.

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::Command;

    use crate::root;

    /// `gateway_*`, `persister_*` and `auth_*` names in `text`, a histogram's `_bucket` taken off.
    fn metric_names(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let bytes = text.as_bytes();
        for prefix in ["gateway_", "persister_", "auth_"] {
            let mut from = 0;
            while let Some(i) = text[from..].find(prefix).map(|i| i + from) {
                let boundary =
                    i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                let end = text[i..]
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .map_or(text.len(), |e| i + e);
                if boundary {
                    let name = &text[i..end];
                    out.insert(name.strip_suffix("_bucket").unwrap_or(name).to_owned());
                }
                from = end;
            }
        }
        out
    }

    #[test]
    fn the_alert_rules_load_in_promtool() {
        let rules = root().join("deploy/prometheus/rules.yml");
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules)
            .output()
            .expect("promtool is needed: `apt-get install prometheus` (.ci/run does)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_metric_the_rules_and_dashboard_name_is_defined() {
        let root = root();
        let defined: String = [
            "gateway/src/metrics.rs",
            "persister/src/metrics.rs",
            "auth/src/metrics.rs",
        ]
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap())
        .collect();
        let mut named = BTreeSet::new();
        for f in [
            "deploy/prometheus/rules.yml",
            "deploy/grafana/liaotian.json",
        ] {
            named.extend(metric_names(
                &std::fs::read_to_string(root.join(f)).unwrap(),
            ));
        }
        assert!(named.len() >= 10, "{named:?}");
        for name in &named {
            assert!(
                defined.contains(&format!("\"{name}\"")),
                "{name} is named in deploy/ but no service defines it"
            );
        }
    }

    #[test]
    fn names_are_found_whole() {
        let n = metric_names(
            "rate(gateway_closes_total{code=\"4008\"}[5m]) x_gateway_no histogram(gateway_publish_seconds_bucket)",
        );
        assert_eq!(
            n.into_iter().collect::<Vec<_>>(),
            ["gateway_closes_total", "gateway_publish_seconds"]
        );
    }
}
