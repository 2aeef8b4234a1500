//! API tokens: created with their hash only (the token itself is shown once by the server), listed, revoked,
//! and looked up by hash to authenticate a request.

use serde_json::json;

use crate::{Actor, ApiToken, AuditEvent, NewApiToken, Store, StoreError, StoreResult, User, WritePool, dispatch, now};

/// `last_used_at` is refreshed at most this often, so a busy automation does not write on every request.
const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

impl Store {
    pub async fn create_token(&self, actor: &Actor, new: NewApiToken) -> StoreResult<ApiToken> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let token: ApiToken = sqlx::query_as(
                "INSERT INTO api_tokens (user_id, name, token_hash, prefix, role_cap, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, user_id, name, prefix, role_cap, expires_at, \
                 last_used_at, revoked_at, created_at",
            )
            .bind(new.user_id)
            .bind(&new.name)
            .bind(&new.token_hash)
            .bind(&new.prefix)
            .bind(new.role_cap.map(|r| r.as_str()))
            .bind(new.expires_at)
            .bind(now())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("you already have a token named '{}'", new.name)))?;
            let details = json!({"name": token.name, "prefix": token.prefix, "role_cap": token.role_cap,
                "expires_at": token.expires_at});
            self.append_audit(&mut tx, actor, AuditEvent::new("token.create", "api_token", Some(token.id), details)).await?;
            tx.commit().await?;
            Ok(token)
        })
    }

    pub async fn list_tokens(&self, user_id: i64) -> StoreResult<Vec<ApiToken>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT id, user_id, name, prefix, role_cap, expires_at, last_used_at, revoked_at, created_at \
                 FROM api_tokens WHERE user_id = $1 ORDER BY id",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?)
        })
    }

    /// Revokes one of `user_id`'s tokens. Revoking twice is harmless and keeps the first revocation time.
    pub async fn revoke_token(&self, actor: &Actor, user_id: i64, token_id: i64) -> StoreResult<ApiToken> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let token: ApiToken = sqlx::query_as(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND user_id = $3 \
                 RETURNING id, user_id, name, prefix, role_cap, expires_at, last_used_at, revoked_at, created_at",
            )
            .bind(now())
            .bind(token_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            self.append_audit(&mut tx, actor, AuditEvent::new("token.revoke", "api_token", Some(token_id), json!({"name": token.name}))).await?;
            tx.commit().await?;
            Ok(token)
        })
    }

    /// Whether the token with this id is still unrevoked, unexpired and owned by an active user: long-lived
    /// requests (event streams) check it again while they run.
    pub async fn token_is_live(&self, token_id: i64) -> StoreResult<bool> {
        dispatch!(self, pool => {
            let live: Option<i64> = sqlx::query_scalar(
                "SELECT t.id FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1 \
                 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2) AND u.active",
            )
            .bind(token_id)
            .bind(now())
            .fetch_optional(pool)
            .await?;
            Ok(live.is_some())
        })
    }

    /// The live (unrevoked, unexpired) token with this hash and its active owner.
    pub async fn authenticate_token(&self, token_hash: &str) -> StoreResult<Option<(ApiToken, User)>> {
        let at = now();
        dispatch!(self, pool => {
            let token: Option<ApiToken> = sqlx::query_as(
                "SELECT id, user_id, name, prefix, role_cap, expires_at, last_used_at, revoked_at, created_at \
                 FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(token_hash)
            .bind(at)
            .fetch_optional(pool)
            .await?;
            let Some(token) = token else { return Ok(None) };
            let user: Option<User> = sqlx::query_as(
                "SELECT id, email, role, active, created_at, last_login_at, session_epoch FROM users WHERE id = $1 AND active",
            )
            .bind(token.user_id)
            .fetch_optional(pool)
            .await?;
            let Some(user) = user else { return Ok(None) };
            if token.last_used_at.is_none_or(|used| (at - used).num_seconds() >= LAST_USED_RESOLUTION_SECONDS) {
                sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2").bind(at).bind(token.id).execute(pool).await?;
            }
            Ok(Some((token, user)))
        })
    }
}
