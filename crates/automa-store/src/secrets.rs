//! Secrets, stored encrypted: the store sees only ciphertext and nonces; the server holds the key.

use serde_json::json;

use crate::{
    Actor, AuditEvent, Listed, Page, SealedSecret, SecretInfo, Store, StoreError, StoreResult, WritePool,
    audit::append_audit, dispatch, now, scripts::actor_user_id,
};

const SECRET_INFO: &str = "id, name, created_by, created_at, updated_at";

impl Store {
    /// Creates a secret, or with `replace` sets the value of an existing one (a 404 when missing).
    pub async fn put_secret(&self, actor: &Actor, sealed: SealedSecret, replace: bool) -> StoreResult<SecretInfo> {
        let created_by = actor_user_id(actor);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let at = now();
            let info: SecretInfo = if replace {
                sqlx::query_as(crate::composed(format!(
                    "UPDATE secrets SET ciphertext = $2, nonce = $3, updated_at = $4 WHERE name = $1 RETURNING {SECRET_INFO}"
                )))
                .bind(&sealed.name)
                .bind(&sealed.ciphertext)
                .bind(&sealed.nonce)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?
            } else {
                sqlx::query_as(crate::composed(format!(
                    "INSERT INTO secrets (name, ciphertext, nonce, created_by, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) RETURNING {SECRET_INFO}"
                )))
                .bind(&sealed.name)
                .bind(&sealed.ciphertext)
                .bind(&sealed.nonce)
                .bind(created_by)
                .bind(at)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| StoreError::from_constraint(e, || format!("a secret named '{}' already exists", sealed.name)))?
            };
            let action = if replace { "secret.update" } else { "secret.create" };
            append_audit!(self, tx, actor, AuditEvent::new(action, "secret", Some(info.id), json!({"name": info.name})));
            tx.commit().await?;
            Ok(info)
        })
    }

    pub async fn list_secrets(&self, page: Page) -> StoreResult<Listed<SecretInfo>> {
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM secrets").fetch_one(pool).await?;
            let items = sqlx::query_as(crate::composed(format!("SELECT {SECRET_INFO} FROM secrets ORDER BY name LIMIT $1 OFFSET $2")))
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(pool)
                .await?;
            Ok(Listed { items, total })
        })
    }

    pub async fn delete_secret(&self, actor: &Actor, name: &str) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let id: i64 = sqlx::query_scalar("DELETE FROM secrets WHERE name = $1 RETURNING id")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            append_audit!(self, tx, actor, AuditEvent::new("secret.delete", "secret", Some(id), json!({"name": name})));
            tx.commit().await?;
            Ok(())
        })
    }

    /// The sealed values of the named secrets that exist.
    pub async fn sealed_secrets(&self, names: &[String]) -> StoreResult<Vec<SealedSecret>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self, pool => {
            let mut select = sqlx::QueryBuilder::new("SELECT name, ciphertext, nonce FROM secrets WHERE name IN (");
            let mut list = select.separated(", ");
            for name in names {
                list.push_bind(name.clone());
            }
            select.push(")");
            Ok(select.build_query_as().fetch_all(pool).await?)
        })
    }
}
