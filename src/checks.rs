//! Checks on a restored database: what `restore` proves before swapping a copy
//! in, and what `verify` reports (the Kaizen seed's nine checks, with numbers).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};

use crate::archive::TableData;
use crate::postgres::Postgres;
use crate::sql::ident;

/// User objects in a database, extension members left out (pg_dump does not
/// dump those as separate entries either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectCounts {
    pub tables: u64,
    pub sequences: u64,
    pub indexes: u64,
    /// Primary key, unique and exclusion constraints.
    pub keys: u64,
    /// Foreign keys, not counting the copies partitions inherit.
    pub foreign_keys: u64,
}

impl ObjectCounts {
    /// What an archive's table of contents says a restore will create.
    pub fn expected(objects: &BTreeMap<String, u32>) -> ObjectCounts {
        let n = |k: &str| u64::from(objects.get(k).copied().unwrap_or(0));
        ObjectCounts {
            tables: n("TABLE"),
            sequences: n("SEQUENCE"),
            // Every key constraint is backed by an index of its own.
            indexes: n("INDEX") + n("CONSTRAINT"),
            keys: n("CONSTRAINT"),
            foreign_keys: n("FK CONSTRAINT"),
        }
    }
}

const USER_RELATIONS: &str = "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
     AND n.nspname NOT LIKE 'pg\\_temp%' \
     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

pub async fn object_counts(pg: &Postgres, db: &str) -> Result<ObjectCounts> {
    let sql = format!(
        "WITH rel AS ({USER_RELATIONS}) SELECT \
         (SELECT count(*) FROM rel WHERE relkind IN ('r','p','f')), \
         (SELECT count(*) FROM rel WHERE relkind = 'S'), \
         (SELECT count(*) FROM rel WHERE relkind IN ('i','I')), \
         (SELECT count(*) FROM pg_constraint k JOIN rel ON rel.oid = k.conrelid WHERE k.contype IN ('p','u','x')), \
         (SELECT count(*) FROM pg_constraint k JOIN rel ON rel.oid = k.conrelid WHERE k.contype = 'f' AND k.conparentid = 0)"
    );
    let rows = pg.query(db, &sql).await?;
    let v: Vec<u64> = rows
        .first()
        .map(|r| r.iter().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    let [tables, sequences, indexes, keys, foreign_keys] = v[..] else {
        bail!("unexpected answer counting objects: {rows:?}");
    };
    Ok(ObjectCounts {
        tables,
        sequences,
        indexes,
        keys,
        foreign_keys,
    })
}

/// Each table's row count in `db`, in `tables`' order. Fails naming the tables
/// that are missing.
pub async fn row_counts(pg: &Postgres, db: &str, tables: &[TableData]) -> Result<Vec<u64>> {
    let present: BTreeSet<(String, String)> = pg
        .query(
            db,
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','m','f')",
        )
        .await?
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.clone())))
        .collect();
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| !present.contains(&(t.schema.clone(), t.name.clone())))
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    if !missing.is_empty() {
        bail!("tables missing after the restore: {}", missing.join(", "));
    }
    let mut counts = vec![0u64; tables.len()];
    for (c, chunk) in tables.chunks(200).enumerate() {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "SELECT {i}, count(*) FROM {}.{}",
                    ident(&t.schema),
                    ident(&t.name)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in pg.scan_query(db, &sql, None).await? {
            let (Some(i), Some(n)) = (
                row.first().and_then(|v| v.parse::<usize>().ok()),
                row.get(1).and_then(|v| v.parse::<u64>().ok()),
            ) else {
                bail!("unexpected answer while counting rows: {row:?}");
            };
            counts[c * 200 + i] = n;
        }
    }
    Ok(counts)
}

/// Foreign keys with rows that point nowhere: (constraint, orphan rows), and
/// how many foreign keys were checked.
pub async fn orphans(pg: &Postgres, db: &str) -> Result<(usize, Vec<(String, u64)>)> {
    let fks = pg
        .query(
            db,
            "SELECT k.conname, format('%I.%I', cn.nspname, cl.relname), format('%I.%I', fn.nspname, fl.relname), \
               (SELECT string_agg(format('%I', a.attname), ',' ORDER BY u.i) \
                  FROM unnest(k.conkey) WITH ORDINALITY u(attnum, i) \
                  JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum), \
               (SELECT string_agg(format('%I', a.attname), ',' ORDER BY u.i) \
                  FROM unnest(k.confkey) WITH ORDINALITY u(attnum, i) \
                  JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum) \
             FROM pg_constraint k \
             JOIN pg_class cl ON cl.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace \
             JOIN pg_class fl ON fl.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = fl.relnamespace \
             WHERE k.contype = 'f' AND k.conparentid = 0 ORDER BY 1",
        )
        .await?;
    let mut found = Vec::new();
    for chunk in fks.chunks(100) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, fk)| {
                let cols: Vec<&str> = fk[3].split(',').collect();
                let refs: Vec<&str> = fk[4].split(',').collect();
                let child_cols = cols
                    .iter()
                    .map(|c| format!("c.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let join = cols
                    .iter()
                    .zip(&refs)
                    .map(|(c, r)| format!("p.{r} = c.{c}"))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                format!(
                    "SELECT {i}, count(*) FROM {} c WHERE ROW({child_cols}) IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM {} p WHERE {join})",
                    fk[1], fk[2]
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in pg.scan_query(db, &sql, None).await? {
            let i: usize = row[0].parse()?;
            let n: u64 = row[1].parse()?;
            if n > 0 {
                found.push((format!("{} on {}", chunk[i][0], chunk[i][1]), n));
            }
        }
    }
    Ok((fks.len(), found))
}

/// Sequences owned by a column whose next value would collide with a row
/// already there: (sequence, its position, the column's max), and how many
/// sequences were checked.
pub async fn sequences_behind(
    pg: &Postgres,
    db: &str,
) -> Result<(usize, Vec<(String, i128, i128)>)> {
    let owned = pg
        .query(
            db,
            "SELECT format('%I.%I', sn.nspname, s.relname), format('%I.%I', tn.nspname, t.relname), format('%I', a.attname) \
             FROM pg_depend d \
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_namespace sn ON sn.oid = s.relnamespace \
             JOIN pg_sequence q ON q.seqrelid = s.oid \
             JOIN pg_class t ON t.oid = d.refobjid AND t.relkind IN ('r','p') \
             JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
               AND d.deptype IN ('a','i') AND q.seqincrement > 0 ORDER BY 1",
        )
        .await?;
    let mut behind = Vec::new();
    for chunk in owned.chunks(100) {
        let sql = chunk
            .iter()
            .enumerate()
            .map(|(i, o)| {
                format!(
                    "SELECT {i}, (SELECT last_value FROM {s}), (SELECT is_called FROM {s}), (SELECT max({c})::text FROM {t})",
                    s = o[0],
                    t = o[1],
                    c = o[2]
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for row in pg.scan_query(db, &sql, None).await? {
            let i: usize = row[0].parse()?;
            let last: i128 = row[1].parse()?;
            let called = row[2] == "t";
            let Ok(max) = row.get(3).map(String::as_str).unwrap_or("").parse::<i128>() else {
                continue;
            };
            // The next nextval() is last+increment when called, else last itself.
            if max > last || (!called && max == last) {
                behind.push((chunk[i][0].clone(), last, max));
            }
        }
    }
    Ok((owned.len(), behind))
}

pub async fn scalar(pg: &Postgres, db: &str, sql: &str) -> Result<u64> {
    let rows = pg.scan_query(db, sql, None).await?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}
