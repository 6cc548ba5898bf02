//! The roles a backup needs (object owners, grantees): which the server lacks,
//! the message that says how to restore them, and creating just those from the
//! globals saved with the backup (existing roles are never altered).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::archive::Summary;
use crate::cleanup;
use crate::postgres::Postgres;
use crate::sql;

pub async fn missing_roles(pg: &Postgres, summary: &Summary) -> Result<Vec<String>> {
    if summary.roles.is_empty() {
        return Ok(vec![]);
    }
    let have: BTreeSet<String> = pg
        .query(&pg.db.maintenance_db, "SELECT rolname FROM pg_roles")
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect();
    Ok(summary
        .roles
        .iter()
        .filter(|r| !have.contains(*r))
        .cloned()
        .collect())
}

pub fn roles_message(missing: &[String], globals: Option<&Path>) -> String {
    let quoted = |g: &Path| {
        shlex::try_quote(&g.display().to_string())
            .map(|q| q.into_owned())
            .unwrap_or_else(|_| g.display().to_string())
    };
    let how = match globals {
        // Sealed with age: decrypted on the way into psql.
        Some(g) if crate::crypto::is_age(g) => format!(
            "Create them from the globals saved with the backup, then run the restore again:\n  \
             age -d -i IDENTITY_FILE {} | psql -d postgres\nor rerun with --with-globals, which creates just the missing roles from that file.",
            quoted(g)
        ),
        Some(g) => format!(
            "Create them from the globals saved with the backup, then run the restore again:\n  \
             psql -d postgres -f {}\nor rerun with --with-globals, which creates just the missing roles from that file.",
            quoted(g)
        ),
        None => "This backup has no saved globals (seed-era file): create the roles by hand (CREATE ROLE ...), \
                 then run the restore again."
            .to_string(),
    };
    format!(
        "The backup needs roles that do not exist on this server: {}. Nothing was changed. {how}",
        missing.join(", ")
    )
}

/// Creates the missing roles (and their memberships) from the saved globals;
/// roles that exist are left exactly as they are. The returned guard drops
/// them again if the restore does not finish (call `done` once it has); a role
/// that something still depends on (an incomplete in-place target) is kept.
pub async fn create_missing_roles(
    pg: &Postgres,
    globals: Option<&Path>,
    missing: &[String],
) -> Result<cleanup::Registered> {
    let Some(globals) = globals else {
        bail!(roles_message(missing, None))
    };
    let text = crate::crypto::read_globals(globals)?;
    let statements = role_statements(&text, missing);
    tracing::info!(
        "Creating roles {} from {}",
        missing.join(", "),
        globals.display()
    );
    let undo = cleanup::register(pg, missing.iter().map(|r| drop_role_sql(r)).collect());
    pg.admin(&statements, None)
        .await
        .map_err(|e| anyhow!(e))
        .context("creating the missing roles")?;
    Ok(undo)
}

/// Drops role `name` unless something still depends on it.
fn drop_role_sql(name: &str) -> String {
    format!(
        "DO $kbackup$ BEGIN DROP ROLE IF EXISTS {}; \
         EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $kbackup$",
        sql::ident(name)
    )
}

/// The roles a `pg_dumpall --globals-only` file creates, in its order.
pub fn created_roles(globals: &str) -> Vec<String> {
    sql::statements(globals)
        .into_iter()
        .filter(|s| {
            let w = sql::leading_words(s, 2);
            w.len() == 2 && w[0] == "CREATE" && w[1] == "ROLE"
        })
        .filter_map(|s| sql::tokens(s).get(2).and_then(|w| w.name()))
        .collect()
}

/// The statements of a `pg_dumpall --globals-only` file that concern `roles`:
/// their CREATE ROLE and ALTER ROLE, and memberships granted to them.
pub fn role_statements(globals: &str, roles: &[String]) -> Vec<String> {
    let wanted: BTreeSet<&str> = roles.iter().map(String::as_str).collect();
    sql::statements(globals)
        .into_iter()
        .filter(|statement| {
            // Comments before a statement are part of its text: look past them.
            let words = sql::tokens(statement);
            let upper = sql::leading_words(statement, 2);
            match upper.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["CREATE", "ROLE"] | ["ALTER", "ROLE"] => words
                    .get(2)
                    .and_then(|w| w.name())
                    .is_some_and(|w| wanted.contains(w.as_str())),
                ["GRANT", _] => sql::acl_roles(statement)
                    .first()
                    .is_some_and(|r| wanted.contains(r.as_str())),
                _ => false,
            }
        })
        .map(|s| {
            // Without the comments that came before it in the file.
            let start = sql::tokens(s).first().map_or(0, |t| t.start);
            s[start..].to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_roles_are_read_past_comments_and_quotes() {
        let g = "--\n-- Roles\n--\n\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER;\n\
                 CREATE ROLE \"we \"\"ird\";\nGRANT x TO y;\nCREATE ROLE app_owner;\n";
        assert_eq!(created_roles(g), ["postgres", "we \"ird", "app_owner"]);
    }

    #[test]
    fn role_statements_pick_only_missing_roles() {
        let g = "CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER PASSWORD 'x';\nCREATE ROLE app_owner;\n\
                 ALTER ROLE app_owner WITH NOSUPERUSER LOGIN;\nGRANT app_owner TO \"Reader\" GRANTED BY postgres;\n\
                 CREATE ROLE \"Reader\";\nGRANT pg_read_all_data TO app_owner GRANTED BY postgres;\n";
        let got = role_statements(g, &["app_owner".to_string(), "Reader".to_string()]);
        assert_eq!(
            got,
            [
                "CREATE ROLE app_owner;",
                "ALTER ROLE app_owner WITH NOSUPERUSER LOGIN;",
                "GRANT app_owner TO \"Reader\" GRANTED BY postgres;",
                "CREATE ROLE \"Reader\";",
                "GRANT pg_read_all_data TO app_owner GRANTED BY postgres;",
            ]
        );
    }
}
