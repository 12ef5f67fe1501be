//! Key rotation of secrets at rest: every sealed field not under the keyring's
//! active key is opened with its old key and sealed again with the active one
//! (`tandem secrets rotate`; docs/SECURITY.md "Secrets at rest").
//!
//! Each row is rewritten by one conditional update that also checks the key ids
//! it read, so a row changed meanwhile (a token refresh seals with the active key
//! anyway) is left as it is, never overwritten with older values. A value that
//! does not open (its key is no longer in the ring) is counted and logged, not
//! fatal: the others are still rotated.

use sqlx::Row;

use crate::secrets::{Keyring, Sealed};
use crate::storage::Db;

/// A table with sealed fields: its id column and `(column prefix, field name in
/// the associated data)` of each field (`{prefix}_sealed`, `{prefix}_key_id`).
struct Table {
    name: &'static str,
    id: &'static str,
    fields: &'static [(&'static str, &'static str)],
}

const TABLES: &[Table] = &[
    Table {
        name: "platform_connections",
        id: "id",
        fields: &[
            ("stream_key", "stream_key"),
            ("access_token", "access_token"),
            ("refresh_token", "refresh_token"),
        ],
    },
    Table {
        name: "oauth_states",
        id: "state",
        fields: &[("verifier", "pkce_verifier")],
    },
    Table {
        name: "discord_links",
        id: "user_id",
        fields: &[
            ("access_token", "access_token"),
            ("refresh_token", "refresh_token"),
        ],
    },
];

/// One sealed field of a row as it will be written back.
struct Field<'a> {
    prefix: &'a str,
    /// The key id read (None: the field is empty).
    old_key_id: Option<String>,
    blob: Option<String>,
    key_id: Option<String>,
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Rows whose sealed fields were re-sealed under the active key.
    pub rows: u64,
    /// Rows left as they were: a value did not open (its key is gone).
    pub failed: u64,
}

/// Re-seals every sealed field of every table under `keyring`'s active key.
pub async fn rotate(db: &Db, keyring: &Keyring) -> Result<Rotation, sqlx::Error> {
    let active = keyring.active_id();
    let mut done = Rotation::default();
    for table in TABLES {
        let cols: Vec<String> = table
            .fields
            .iter()
            .flat_map(|(p, _)| [format!("{p}_sealed"), format!("{p}_key_id")])
            .collect();
        let stale: Vec<String> = table
            .fields
            .iter()
            .map(|(p, _)| format!("({p}_key_id IS NOT NULL AND {p}_key_id <> $1)"))
            .collect();
        let select = format!(
            "SELECT {}, {} FROM {} WHERE {}",
            table.id,
            cols.join(", "),
            table.name,
            stale.join(" OR ")
        );
        let rows = sqlx::query(&select)
            .bind(active)
            .fetch_all(&db.pool)
            .await?;
        for row in rows {
            let id: String = row.try_get(0)?;
            let mut updates: Vec<Field> = Vec::new();
            let mut ok = true;
            for (i, (prefix, field)) in table.fields.iter().enumerate() {
                let blob: Option<String> = row.try_get(1 + 2 * i)?;
                let key_id: Option<String> = row.try_get(2 + 2 * i)?;
                let (Some(blob), Some(key_id)) = (blob, key_id) else {
                    updates.push(Field {
                        prefix,
                        old_key_id: None,
                        blob: None,
                        key_id: None,
                    });
                    continue;
                };
                if key_id == active {
                    updates.push(Field {
                        prefix,
                        old_key_id: Some(key_id.clone()),
                        blob: Some(blob),
                        key_id: Some(key_id),
                    });
                    continue;
                }
                let aad = format!("{}:{id}:{field}", table.name);
                let old = Sealed {
                    key_id: key_id.clone(),
                    blob,
                };
                match keyring.open(&old, &aad) {
                    Ok(plain) => {
                        let new = keyring.seal(&plain, &aad);
                        updates.push(Field {
                            prefix,
                            old_key_id: Some(key_id),
                            blob: Some(new.blob),
                            key_id: Some(new.key_id),
                        });
                    }
                    Err(err) => {
                        tracing::error!(table = table.name, %id, field, error = %err, "cannot re-seal");
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                done.failed += 1;
                continue;
            }
            // SET each field; WHERE the key ids are still the ones read.
            let mut sets = Vec::new();
            let mut wheres = vec![format!("{} = $1", table.id)];
            let mut n = 2;
            for Field {
                prefix, old_key_id, ..
            } in &updates
            {
                if old_key_id.is_some() {
                    sets.push(format!(
                        "{prefix}_sealed = ${n}, {prefix}_key_id = ${}",
                        n + 1
                    ));
                    wheres.push(format!("{prefix}_key_id = ${}", n + 2));
                    n += 3;
                } else {
                    wheres.push(format!("{prefix}_key_id IS NULL"));
                }
            }
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                table.name,
                sets.join(", "),
                wheres.join(" AND ")
            );
            let mut q = sqlx::query(&sql).bind(&id);
            for f in &updates {
                if let Some(old_id) = &f.old_key_id {
                    q = q
                        .bind(f.blob.clone())
                        .bind(f.key_id.clone())
                        .bind(old_id.clone());
                }
            }
            done.rows += q.execute(&db.pool).await?.rows_affected();
        }
    }
    Ok(done)
}
