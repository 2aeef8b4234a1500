//! Scripts and their immutable versions. Changing a script's content appends a version; the script row points
//! at its current one, and runs record the version they ran.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    Actor, AuditEvent, Listed, NewScript, Page, Script, ScriptUpdate, ScriptVersion, Store, StoreError, StoreResult,
    WritePool, composed, dispatch, now,
};

const VERSION_COLUMNS: &str =
    "script_id, version, content, sha256, size, dependencies, requires_python, lock, created_by, created_at";

/// Appends version `$2` of script `$1`.
const INSERT_VERSION: &str = "INSERT INTO script_versions (script_id, version, content, sha256, size, dependencies, \
     requires_python, lock, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const SCRIPT_SELECT: &str = "SELECT s.id, s.name, s.description, s.filename, v.content, v.version, v.sha256, v.size, \
     v.dependencies, v.requires_python, v.lock, s.created_by, s.created_at, s.updated_at FROM scripts s \
     JOIN script_versions v ON v.script_id = s.id AND v.version = s.current_version";

pub(crate) fn sha256_hex(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

impl Store {
    pub async fn create_script(&self, actor: &Actor, new: NewScript) -> StoreResult<Script> {
        let sha256 = sha256_hex(&new.content);
        let created_by = actor_user_id(actor);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let at = now();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO scripts (name, description, filename, current_version, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, 1, $4, $5, $5) RETURNING id",
            )
            .bind(&new.name)
            .bind(&new.description)
            .bind(&new.filename)
            .bind(created_by)
            .bind(at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a script named '{}' already exists", new.name)))?;
            sqlx::query(INSERT_VERSION)
                .bind(id)
                .bind(1_i64)
                .bind(&new.content)
                .bind(&sha256)
                .bind(new.content.len() as i64)
                .bind(&new.packages.dependencies)
                .bind(&new.packages.requires_python)
                .bind(&new.packages.lock)
                .bind(created_by)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            let details = json!({"name": new.name, "version": 1, "sha256": sha256,
                "dependencies": new.packages.dependencies});
            self.append_audit(&mut tx, actor, AuditEvent::new("script.create", "script", Some(id), details)).await?;
            let script = sqlx::query_as(composed(format!("{SCRIPT_SELECT} WHERE s.id = $1"))).bind(id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(script)
        })
    }

    pub async fn get_script(&self, id: i64) -> StoreResult<Script> {
        dispatch!(self, pool => {
            sqlx::query_as(composed(format!("{SCRIPT_SELECT} WHERE s.id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound)
        })
    }

    pub async fn get_script_by_name(&self, name: &str) -> StoreResult<Script> {
        dispatch!(self, pool => {
            sqlx::query_as(composed(format!("{SCRIPT_SELECT} WHERE s.name = $1")))
                .bind(name)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound)
        })
    }

    /// Scripts by id; `name_contains` narrows the list to names containing it.
    pub async fn list_scripts(&self, name_contains: Option<&str>, page: Page) -> StoreResult<Listed<Script>> {
        let pattern = name_contains.map(like_pattern);
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM scripts WHERE ($1 IS NULL OR lower(name) LIKE $1 ESCAPE '\\')")
                .bind(&pattern)
                .fetch_one(pool)
                .await?;
            let items = sqlx::query_as(composed(format!(
                "{SCRIPT_SELECT} WHERE ($1 IS NULL OR lower(s.name) LIKE $1 ESCAPE '\\') ORDER BY s.id LIMIT $2 OFFSET $3"
            )))
            .bind(&pattern)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
            Ok(Listed { items, total })
        })
    }

    /// Applies an update; new content that differs from the current version's appends a version.
    pub async fn update_script(&self, actor: &Actor, id: i64, update: ScriptUpdate) -> StoreResult<Script> {
        let created_by = actor_user_id(actor);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let current: Script = sqlx::query_as(composed(format!("{SCRIPT_SELECT} WHERE s.id = $1")))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            if update.expected_version.is_some_and(|expected| expected != current.version) {
                return Err(StoreError::Conflict(format!(
                    "the script changed meanwhile (it is at version {}); try again",
                    current.version
                )));
            }
            let at = now();
            let mut version = current.version;
            let new_content = update.content.as_ref().filter(|content| sha256_hex(content) != current.sha256);
            let new_packages = update.packages.as_ref().filter(|packages| **packages != current.packages);
            if new_content.is_some() || new_packages.is_some() {
                version += 1;
                let content = new_content.unwrap_or(&current.content);
                let packages = new_packages.unwrap_or(&current.packages);
                sqlx::query(INSERT_VERSION)
                    .bind(id)
                    .bind(version)
                    .bind(content)
                    .bind(sha256_hex(content))
                    .bind(content.len() as i64)
                    .bind(&packages.dependencies)
                    .bind(&packages.requires_python)
                    .bind(&packages.lock)
                    .bind(created_by)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            let name = update.name.clone().unwrap_or(current.name);
            sqlx::query(
                "UPDATE scripts SET name = $1, description = $2, filename = $3, current_version = $4, updated_at = $5 \
                 WHERE id = $6",
            )
            .bind(&name)
            .bind(update.description.clone().unwrap_or(current.description))
            .bind(update.filename.clone().unwrap_or(current.filename))
            .bind(version)
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a script named '{name}' already exists")))?;
            let details = json!({"name": update.name, "description": update.description, "filename": update.filename,
                "version": version, "new_version": version != current.version,
                "dependencies": new_packages.map(|packages| &packages.dependencies),
                "lock_changed": new_packages.is_some_and(|packages| packages.lock != current.packages.lock)});
            self.append_audit(&mut tx, actor, AuditEvent::new("script.update", "script", Some(id), details)).await?;
            let script = sqlx::query_as(composed(format!("{SCRIPT_SELECT} WHERE s.id = $1"))).bind(id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(script)
        })
    }

    /// Deletes a script with its versions and its finished runs (the audit log keeps their record); refused while
    /// a task uses it or one of its runs is queued or running.
    pub async fn delete_script(&self, actor: &Actor, id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let users: Vec<String> = sqlx::query_scalar("SELECT name FROM tasks WHERE script_id = $1 ORDER BY id LIMIT 5")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            if !users.is_empty() {
                return Err(StoreError::InUse(format!("the script is used by tasks: {}", users.join(", "))));
            }
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM runs WHERE script_id = $1 AND status IN ('queued', 'running')",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if active > 0 {
                return Err(StoreError::InUse(format!("the script has {active} queued or running runs")));
            }
            let name: String = sqlx::query_scalar("DELETE FROM scripts WHERE id = $1 RETURNING name")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            self.append_audit(&mut tx, actor, AuditEvent::new("script.delete", "script", Some(id), json!({"name": name}))).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// A script's versions, newest first.
    pub async fn list_script_versions(&self, script_id: i64, page: Page) -> StoreResult<Listed<ScriptVersion>> {
        dispatch!(self, pool => {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM scripts WHERE id = $1").bind(script_id).fetch_optional(pool).await?;
            exists.ok_or(StoreError::NotFound)?;
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM script_versions WHERE script_id = $1")
                .bind(script_id)
                .fetch_one(pool)
                .await?;
            let items = sqlx::query_as(composed(format!(
                "SELECT {VERSION_COLUMNS} FROM script_versions WHERE script_id = $1 ORDER BY version DESC LIMIT $2 OFFSET $3"
            )))
            .bind(script_id)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
            Ok(Listed { items, total })
        })
    }

    pub async fn get_script_version(&self, script_id: i64, version: i64) -> StoreResult<ScriptVersion> {
        dispatch!(self, pool => {
            sqlx::query_as(composed(format!("SELECT {VERSION_COLUMNS} FROM script_versions WHERE script_id = $1 AND version = $2")))
            .bind(script_id)
            .bind(version)
            .fetch_optional(pool)
            .await?
            .ok_or(StoreError::NotFound)
        })
    }
}

/// The user behind an actor, for `created_by` columns; agents and the system are not users.
pub(crate) fn actor_user_id(actor: &Actor) -> Option<i64> {
    (actor.actor_type == "user").then(|| actor.actor_id.as_deref().and_then(|id| id.parse().ok())).flatten()
}

/// A LIKE pattern matching names that contain `needle` literally.
pub(crate) fn like_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}
