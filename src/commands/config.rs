//! `kbackup config`: the effective settings and where each came from.

use anyhow::Result;
use serde_json::json;

use crate::cli::ConfigArgs;
use crate::config::{Config, Databases};

pub fn run(cfg: &Config, args: &ConfigArgs) -> Result<()> {
    let rows: Vec<(String, String, String, String)> = cfg
        .resolved
        .iter()
        .map(|(spec, raw)| {
            let value = match raw {
                None => "(unset)".to_string(),
                Some(_) if spec.secret => "<redacted>".to_string(),
                Some(r) => r.value.clone(),
            };
            let source = raw
                .as_ref()
                .map(|r| r.source.to_string())
                .unwrap_or_else(|| "-".into());
            (
                spec.env_name().to_string(),
                spec.key.to_string(),
                value,
                source,
            )
        })
        .collect();
    if args.json {
        let items: Vec<_> = cfg
            .resolved
            .iter()
            .zip(&rows)
            .map(|((spec, raw), (env, key, value, _))| {
                json!({
                    "env": env, "toml": key, "value": if raw.is_some() { json!(value) } else { json!(null) },
                    "secret": spec.secret, "source": raw.as_ref().map(|r| &r.source), "doc": spec.doc,
                })
            })
            .collect();
        crate::out!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(7);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(8);
    let w2 = rows
        .iter()
        .map(|r| r.2.len())
        .max()
        .unwrap_or(0)
        .clamp(5, 40);
    crate::out!(
        "{:w0$}  {:w1$}  {:w2$}  SOURCE",
        "SETTING",
        "TOML KEY",
        "VALUE"
    );
    for (env, key, value, source) in &rows {
        crate::out!("{env:w0$}  {key:w1$}  {value:w2$}  {source}");
    }
    crate::out!();
    crate::out!(
        "Mode: {}; store: {}",
        match &cfg.db.container {
            Some(c) => format!("docker exec into container {c}"),
            None => "direct connection".to_string(),
        },
        cfg.backup_dir.display()
    );
    match &cfg.databases {
        Databases::One => {}
        Databases::Several(each) => {
            crate::out!("Databases ({}):", each.len());
            for c in each {
                crate::out!("  {}", describe(c));
            }
        }
        Databases::All { exclude, entries } => {
            crate::out!(
                "Databases: all on the server that accept connections, templates{} aside",
                if exclude.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", exclude.join(", "))
                }
            );
            for c in entries {
                crate::out!("  {} ([[database]] table)", describe(c));
            }
        }
    }
    Ok(())
}

/// `kairon: prefix kairon, keep hourly 24 daily 7 weekly 4 monthly 0, container postgres-db`
fn describe(c: &Config) -> String {
    let p = &c.policy;
    format!(
        "{}: prefix {}, keep hourly {} daily {} weekly {} monthly {}, {}",
        c.db.name,
        c.prefix,
        p.keep_hourly,
        p.keep_daily,
        p.keep_weekly,
        p.keep_monthly,
        crate::postgres::Postgres::new(c.db.clone()).describe_server()
    )
}
