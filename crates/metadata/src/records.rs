//! What container and sandbox records share: a JSON value per `(namespace,
//! id)` in a namespaced table, created once, read, listed through filters,
//! rewritten by an update and deleted, with containerd's error wording
//! (`<kind> "<id>": not found`, `... already exists`, `... corrupt record`).
//! Validation, update field paths and GC notifications stay with each kind.

use crate::{db_err, namespaces, Db, NsTable};
use redb::{ReadableTable, TableHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::SystemTime;
use stevedore_types::filters::Filter;
use stevedore_types::{Error, Result};

/// A record kept as JSON in a namespaced table.
pub(crate) trait Record: Serialize + DeserializeOwned {
    /// The table that holds the records.
    const TABLE: NsTable;
    /// The record's name in messages (`container`, `sandbox`).
    const KIND: &'static str;
    /// The id the record is keyed by within its namespace.
    fn id(&self) -> &str;
    /// The value filters see at a field path.
    fn field(&self, path: &[String]) -> Option<String>;
    /// The creation and last-update times.
    fn timestamps_mut(&mut self) -> (&mut SystemTime, &mut SystemTime);
}

/// Parse a stored record; a record that does not parse is corrupt.
pub(crate) fn decode<R: Record>(id: &str, bytes: &[u8]) -> Result<R> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("{} {id:?}: corrupt record: {e}", R::KIND)))
}

fn encode<R: Record>(r: &R) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_else(|e| panic!("{} record serialises: {e}", R::KIND))
}

fn not_found<R: Record>(id: &str) -> Error {
    Error::not_found(format!("{} {id:?}: not found", R::KIND))
}

/// A database error of `op` on `R`'s records, e.g. `get container`.
fn record_err<R: Record>(op: &str, e: impl std::fmt::Display) -> Error {
    db_err(&format!("{op} {}", R::KIND), e)
}

/// A database error of `op` on `R`'s table, e.g. `open containers`.
fn table_err<R: Record>(op: &str, e: impl std::fmt::Display) -> Error {
    db_err(&format!("{op} {}", R::TABLE.name()), e)
}

impl Db {
    /// Insert `r` with both timestamps set to now; AlreadyExists when its id
    /// is taken. The namespace comes into being if needed.
    pub(crate) fn create_record<R: Record>(&self, ns: &str, mut r: R) -> Result<R> {
        self.update(|tx| {
            namespaces::ensure(tx, ns)?;
            let mut t = tx
                .open_table(R::TABLE)
                .map_err(|e| table_err::<R>("open", e))?;
            if t.get((ns, r.id()))
                .map_err(|e| record_err::<R>("get", e))?
                .is_some()
            {
                return Err(Error::already_exists(format!(
                    "{} {:?}: already exists",
                    R::KIND,
                    r.id()
                )));
            }
            let now = SystemTime::now();
            let (created, updated) = r.timestamps_mut();
            *created = now;
            *updated = now;
            t.insert((ns, r.id()), encode(&r).as_slice())
                .map_err(|e| record_err::<R>("insert", e))?;
            Ok(r)
        })
    }

    /// The record `id`.
    pub(crate) fn get_record<R: Record>(&self, ns: &str, id: &str) -> Result<R> {
        self.view(|tx| {
            let t = tx
                .open_table(R::TABLE)
                .map_err(|e| table_err::<R>("open", e))?;
            let v = t
                .get((ns, id))
                .map_err(|e| record_err::<R>("get", e))?
                .ok_or_else(|| not_found::<R>(id))?;
            decode(id, v.value())
        })
    }

    /// The records of a namespace matching `filters` (any of them; none = all).
    pub(crate) fn list_records<R: Record>(&self, ns: &str, filters: &[String]) -> Result<Vec<R>> {
        let filter = Filter::parse_all(filters)?;
        self.view(|tx| {
            let t = tx
                .open_table(R::TABLE)
                .map_err(|e| table_err::<R>("open", e))?;
            let mut out = Vec::new();
            for r in t.range((ns, "")..).map_err(|e| table_err::<R>("list", e))? {
                let (k, v) = r.map_err(|e| table_err::<R>("list", e))?;
                let (kns, id) = k.value();
                if kns != ns {
                    break;
                }
                let r: R = decode(id, v.value())?;
                if filter.matches(&|p: &[String]| r.field(p)) {
                    out.push(r);
                }
            }
            Ok(out)
        })
    }

    /// Replace the record `id` with what `change` makes of it (NotFound when
    /// there is none), its update time set to now.
    pub(crate) fn update_record<R: Record>(
        &self,
        ns: &str,
        id: &str,
        change: impl FnOnce(R) -> Result<R>,
    ) -> Result<R> {
        self.update(|tx| {
            let mut t = tx
                .open_table(R::TABLE)
                .map_err(|e| table_err::<R>("open", e))?;
            let stored = {
                let v = t
                    .get((ns, id))
                    .map_err(|e| record_err::<R>("get", e))?
                    .ok_or_else(|| not_found::<R>(id))?;
                decode(id, v.value())?
            };
            let mut u = change(stored)?;
            *u.timestamps_mut().1 = SystemTime::now();
            t.insert((ns, id), encode(&u).as_slice())
                .map_err(|e| record_err::<R>("update", e))?;
            Ok(u)
        })
    }

    /// Delete the record `id`; NotFound when there is none.
    pub(crate) fn delete_record<R: Record>(&self, ns: &str, id: &str) -> Result<()> {
        self.update(|tx| {
            let mut t = tx
                .open_table(R::TABLE)
                .map_err(|e| table_err::<R>("open", e))?;
            t.remove((ns, id))
                .map_err(|e| record_err::<R>("delete", e))?
                .ok_or_else(|| not_found::<R>(id))?;
            Ok(())
        })
    }
}

/// Call `f` with every record of every namespace (the GC's roots).
pub(crate) fn for_each_record<R: Record>(
    tx: &redb::WriteTransaction,
    mut f: impl FnMut(&str, R) -> Result<()>,
) -> Result<()> {
    let t = tx
        .open_table(R::TABLE)
        .map_err(|e| table_err::<R>("open", e))?;
    crate::scan_all(&t, R::TABLE.name(), |ns, id, v| f(ns, decode(id, v)?))
}
