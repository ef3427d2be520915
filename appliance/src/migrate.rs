//! Forward migrations of appliance.toml between format versions (`version = N`).
//!
//! A firmware reads formats 1 to [`CURRENT_VERSION`]. When an update brings a newer
//! format, the new slot's first boot (`applctl update check-boot`, before any daemon reads
//! the config) migrates the active generation with the new firmware's [`MIGRATIONS`] and
//! stores the result as a new generation whose comment starts with `migration:`. The old
//! generation stays in the store untouched, so a rollback to the old firmware activates it
//! again (the updater recorded its number when the install started).
//!
//! A migration works on the parsed TOML table, so comments of the migrated generation are
//! not carried over; the generation it was made from keeps them.

use crate::load_str;
use crate::model::CURRENT_VERSION;
use crate::store::{Store, StoreError};

/// One step from format `from` to `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub from: u32,
    /// What changes, for the generation's comment and the log.
    pub describe: &'static str,
    pub apply: fn(&mut toml::Table) -> Result<(), String>,
}

/// This firmware's migrations, oldest first. Format 1 is the first one: none yet. A change
/// of format raises [`CURRENT_VERSION`] and adds its step here.
pub const MIGRATIONS: &[Migration] = &[];

/// The comment prefix of a generation written by a migration.
pub const COMMENT_PREFIX: &str = "migration:";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "generation {generation} is not valid TOML ({reason}); fix it with `applctl config save`"
    )]
    Parse { generation: u64, reason: String },
    #[error(
        "generation {generation} has no integer `version`; add `version = 1` with `applctl config save`"
    )]
    NoVersion { generation: u64 },
    #[error(
        "generation {generation} has format version {found}, newer than this firmware's {current}; activate an older generation or install a newer release"
    )]
    Newer {
        generation: u64,
        found: i64,
        current: u32,
    },
    #[error(
        "no migration from format version {from}: this firmware cannot read generation {generation}"
    )]
    Missing { generation: u64, from: u32 },
    #[error("migrating generation {generation} from format version {from} failed: {reason}")]
    Step {
        generation: u64,
        from: u32,
        reason: String,
    },
    #[error(
        "generation {generation} migrated to format version {to} does not validate, so it was not activated:\n{reason}"
    )]
    Invalid {
        generation: u64,
        to: u32,
        reason: String,
    },
}

/// What a migration of the active generation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The generation that was active before.
    pub from_generation: u64,
    /// The new, now active, generation.
    pub generation: u64,
    pub from_version: u32,
    pub to_version: u32,
}

/// Migrates the active generation to this firmware's format, commits the result and
/// activates it; `None` when nothing is stored or the format is already current.
/// `firmware` names the release doing it, for the generation's comment.
pub fn migrate_active(store: &Store, firmware: &str) -> Result<Option<Migrated>, MigrateError> {
    migrate_with(store, MIGRATIONS, CURRENT_VERSION, firmware, |text| {
        load_str(text)
            .map(|_| ())
            .map_err(|d| d.render(text, "migrated config", false))
    })
}

/// [`migrate_active`] with the steps, the target version and the check of the result given
/// (tests bring their own formats).
pub fn migrate_with(
    store: &Store,
    migrations: &[Migration],
    target: u32,
    firmware: &str,
    validate: impl Fn(&str) -> Result<(), String>,
) -> Result<Option<Migrated>, MigrateError> {
    let (Some(current), warnings) = store.current()? else {
        return Ok(None);
    };
    for w in warnings {
        tracing::warn!(file = %w.file.display(), "{}", w.message);
    }
    let generation = current.info.number;
    let Some((text, from)) = migrate_text(generation, &current.text, migrations, target)? else {
        return Ok(None);
    };
    validate(&text).map_err(|reason| MigrateError::Invalid {
        generation,
        to: target,
        reason,
    })?;
    let comment = format!(
        "{COMMENT_PREFIX} format {from} to {target} by {firmware}, from generation {generation}"
    );
    let new = store.commit(&text, &comment)?;
    store.activate(new)?;
    tracing::info!(
        from_generation = generation,
        generation = new,
        from,
        to = target,
        "migrated the active config"
    );
    Ok(Some(Migrated {
        from_generation: generation,
        generation: new,
        from_version: from,
        to_version: target,
    }))
}

/// The text of generation `generation` migrated to `target`, with the version it had;
/// `None` when it is already at `target`.
pub fn migrate_text(
    generation: u64,
    text: &str,
    migrations: &[Migration],
    target: u32,
) -> Result<Option<(String, u32)>, MigrateError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| MigrateError::Parse {
                generation,
                reason: e.message().to_owned(),
            })?;
    let found = table
        .get("version")
        .and_then(toml::Value::as_integer)
        .ok_or(MigrateError::NoVersion { generation })?;
    let from = u32::try_from(found)
        .ok()
        .filter(|v| (1..=target).contains(v))
        .ok_or(MigrateError::Newer {
            generation,
            found,
            current: target,
        })?;
    if from == target {
        return Ok(None);
    }
    for version in from..target {
        let step = migrations
            .iter()
            .find(|m| m.from == version)
            .ok_or(MigrateError::Missing {
                generation,
                from: version,
            })?;
        (step.apply)(&mut table).map_err(|reason| MigrateError::Step {
            generation,
            from: version,
            reason,
        })?;
        table.insert(
            "version".into(),
            toml::Value::Integer(i64::from(version) + 1),
        );
        tracing::info!(
            generation,
            from = version,
            "config migration: {}",
            step.describe
        );
    }
    let body = toml::to_string(&table).map_err(|e| MigrateError::Step {
        generation,
        from: target - 1,
        reason: e.to_string(),
    })?;
    Ok(Some((body, from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format 2 that renamed `[dns] query_log_size` to `[dns] log_size`, and a format 3
    /// that requires `[dns] log_size` to be positive.
    fn rename(t: &mut toml::Table) -> Result<(), String> {
        if let Some(dns) = t.get_mut("dns").and_then(toml::Value::as_table_mut)
            && let Some(v) = dns.remove("query_log_size")
        {
            dns.insert("log_size".into(), v);
        }
        Ok(())
    }

    fn positive(t: &mut toml::Table) -> Result<(), String> {
        match t
            .get("dns")
            .and_then(|d| d.get("log_size"))
            .and_then(toml::Value::as_integer)
        {
            Some(n) if n <= 0 => Err(format!("dns.log_size = {n} must be positive in format 3")),
            _ => Ok(()),
        }
    }

    const STEPS: &[Migration] = &[
        Migration {
            from: 1,
            describe: "dns.query_log_size is now dns.log_size",
            apply: rename,
        },
        Migration {
            from: 2,
            describe: "dns.log_size must be positive",
            apply: positive,
        },
    ];

    fn ok(_: &str) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn a_chain_of_steps_runs_in_order_and_sets_the_version() {
        let (text, from) = migrate_text(7, "version = 1\n[dns]\nquery_log_size = 10\n", STEPS, 3)
            .unwrap()
            .unwrap();
        assert_eq!(from, 1);
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["version"].as_integer(), Some(3));
        assert_eq!(t["dns"]["log_size"].as_integer(), Some(10));
        assert!(t["dns"].get("query_log_size").is_none());
        // A middle version runs only the steps after it.
        let (_, from) = migrate_text(7, "version = 2\n", STEPS, 3).unwrap().unwrap();
        assert_eq!(from, 2);
    }

    #[test]
    fn the_current_format_is_left_alone() {
        assert_eq!(migrate_text(1, "version = 3\n", STEPS, 3).unwrap(), None);
    }

    #[test]
    fn refusals_name_the_generation_and_the_way_out() {
        let e = migrate_text(4, "version = 4\n", STEPS, 3).unwrap_err();
        assert!(matches!(e, MigrateError::Newer { found: 4, .. }), "{e}");
        assert!(e.to_string().contains("generation 4"), "{e}");
        let e = migrate_text(4, "[dns]\n", STEPS, 3).unwrap_err();
        assert!(matches!(e, MigrateError::NoVersion { .. }), "{e}");
        let e = migrate_text(4, "version = 1\n", &STEPS[1..], 3).unwrap_err();
        assert!(matches!(e, MigrateError::Missing { from: 1, .. }), "{e}");
        let e = migrate_text(4, "version = 2\n[dns]\nlog_size = 0\n", STEPS, 3).unwrap_err();
        assert!(matches!(e, MigrateError::Step { from: 2, .. }), "{e}");
        let e = migrate_text(4, "version = \n", STEPS, 3).unwrap_err();
        assert!(matches!(e, MigrateError::Parse { .. }), "{e}");
    }

    #[test]
    fn the_store_gets_a_new_active_generation_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = "# mine\nversion = 1\n[dns]\nquery_log_size = 10\n";
        let g = store.commit(old, "applctl config save").unwrap();
        store.activate(g).unwrap();

        let m = migrate_with(&store, STEPS, 3, "1.4.0", ok)
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            Migrated {
                from_generation: g,
                generation: g + 1,
                from_version: 1,
                to_version: 3
            }
        );
        assert_eq!(store.active().unwrap(), Some(g + 1));
        let new = store.get(g + 1).unwrap();
        assert!(
            new.info.comment.starts_with(COMMENT_PREFIX),
            "{:?}",
            new.info
        );
        assert!(new.info.comment.contains("1.4.0"), "{:?}", new.info);
        assert_eq!(store.get(g).unwrap().text, old);
        // Running again (the next boot) finds nothing to do.
        assert_eq!(migrate_with(&store, STEPS, 3, "1.4.0", ok).unwrap(), None);
        // What a rollback does: the old generation is active again, byte for byte.
        store.rollback(g).unwrap();
        assert_eq!(store.current().unwrap().0.unwrap().text, old);
    }

    #[test]
    fn a_result_that_does_not_validate_is_not_activated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let g = store.commit("version = 1\n", "save").unwrap();
        store.activate(g).unwrap();
        let e =
            migrate_with(&store, STEPS, 3, "1.4.0", |_| Err("dns: missing".into())).unwrap_err();
        assert!(matches!(e, MigrateError::Invalid { .. }), "{e}");
        assert_eq!(store.active().unwrap(), Some(g));
        assert_eq!(store.history().unwrap().0.len(), 1);
    }

    #[test]
    fn an_empty_store_and_this_firmware_have_nothing_to_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(migrate_active(&store, "x").unwrap(), None);
        let default = crate::DEFAULT_CONFIG;
        let g = store.commit(default, "save").unwrap();
        store.activate(g).unwrap();
        assert_eq!(migrate_active(&store, "x").unwrap(), None);
    }
}
