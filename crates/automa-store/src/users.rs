//! Users: the first-admin setup, CRUD, and credentials lookup for login.

use serde_json::json;

use crate::{
    Actor, AuditEvent, Listed, NewUser, Page, Store, StoreError, StoreResult, User, UserUpdate, WritePool, composed,
    dispatch, now,
};

const USER_COLUMNS: &str = "id, email, role, active, created_at, last_login_at, session_epoch";

impl Store {
    pub async fn count_users(&self) -> StoreResult<i64> {
        dispatch!(self, pool => Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await?))
    }

    /// Creates a user. With `only_if_first`, the user is created only when there is none yet, checked inside
    /// the write lock so that two racing first-admin requests cannot both succeed; the loser gets `None`.
    pub async fn create_user(&self, actor: &Actor, new: NewUser, only_if_first: bool) -> StoreResult<Option<User>> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if only_if_first {
                let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *tx).await?;
                if existing > 0 {
                    return Ok(None);
                }
            }
            let user: User = sqlx::query_as(
                "INSERT INTO users (email, password_hash, role, active, created_at) VALUES ($1, $2, $3, $4, $5) \
                 RETURNING id, email, role, active, created_at, last_login_at, session_epoch",
            )
            .bind(&new.email)
            .bind(&new.password_hash)
            .bind(new.role.as_str())
            .bind(true)
            .bind(now())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a user with email '{}' already exists", new.email)))?;
            let event = AuditEvent::new("user.create", "user", Some(user.id), json!({"email": user.email, "role": user.role}));
            self.append_audit(&mut tx, actor, event).await?;
            tx.commit().await?;
            Ok(Some(user))
        })
    }

    pub async fn get_user(&self, id: i64) -> StoreResult<User> {
        dispatch!(self, pool => {
            sqlx::query_as(composed(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(StoreError::NotFound)
        })
    }

    /// The user and their password hash, for a login attempt.
    pub async fn user_credentials(&self, email: &str) -> StoreResult<Option<(User, String)>> {
        dispatch!(self, pool => {
            let user: Option<User> = sqlx::query_as(composed(format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1")))
                .bind(email)
                .fetch_optional(pool)
                .await?;
            let Some(user) = user else { return Ok(None) };
            let hash: String =
                sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1").bind(user.id).fetch_one(pool).await?;
            Ok(Some((user, hash)))
        })
    }

    pub async fn list_users(&self, page: Page) -> StoreResult<Listed<User>> {
        dispatch!(self, pool => {
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await?;
            let items = sqlx::query_as(composed(format!("SELECT {USER_COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2")))
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(pool)
                .await?;
            Ok(Listed { items, total })
        })
    }

    /// Applies the given changes. Refuses to leave the system without an active admin.
    pub async fn update_user(&self, actor: &Actor, id: i64, update: UserUpdate) -> StoreResult<User> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let current: User = sqlx::query_as(composed(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let demotes_admin = current.role == automa_core::Role::Admin
                && (update.role.is_some_and(|role| role != automa_core::Role::Admin) || update.active == Some(false));
            if demotes_admin {
                let other_admins: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND active AND id <> $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                if other_admins == 0 {
                    return Err(StoreError::Conflict("the last active admin cannot be demoted or deactivated".into()));
                }
            }
            let email = update.email.clone().unwrap_or(current.email);
            let role = update.role.unwrap_or(current.role);
            let active = update.active.unwrap_or(current.active);
            let user: User = sqlx::query_as(
                "UPDATE users SET email = $1, role = $2, active = $3, password_hash = COALESCE($4, password_hash), \
                 session_epoch = session_epoch + $6 WHERE id = $5 RETURNING id, email, role, active, created_at, last_login_at, session_epoch",
            )
            .bind(&email)
            .bind(role.as_str())
            .bind(active)
            .bind(&update.password_hash)
            .bind(id)
            .bind(i64::from(update.ends_sessions()))
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_constraint(e, || format!("a user with email '{email}' already exists")))?;
            let details = json!({
                "email": update.email, "role": update.role.map(|r| r.as_str()), "active": update.active,
                "password_changed": update.password_hash.is_some(),
                "sessions_revoked": update.ends_sessions(),
            });
            self.append_audit(&mut tx, actor, AuditEvent::new("user.update", "user", Some(id), details)).await?;
            tx.commit().await?;
            Ok(user)
        })
    }

    /// Deletes a user and (by cascade) their API tokens. Refuses to delete the last active admin.
    pub async fn delete_user(&self, actor: &Actor, id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let user: User = sqlx::query_as(composed(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1")))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            if user.role == automa_core::Role::Admin {
                let other_admins: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND active AND id <> $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                if other_admins == 0 {
                    return Err(StoreError::Conflict("the last active admin cannot be deleted".into()));
                }
            }
            sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *tx).await?;
            self.append_audit(&mut tx, actor, AuditEvent::new("user.delete", "user", Some(id), json!({"email": user.email}))).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Ends every session of a user by moving their session epoch on, and records why (`action`, e.g.
    /// `auth.logout`). API tokens are not affected: they are revoked one by one.
    pub async fn revoke_sessions(&self, actor: &Actor, user_id: i64, action: &'static str) -> StoreResult<User> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let user: User = sqlx::query_as(composed(format!(
                "UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1 RETURNING {USER_COLUMNS}"
            )))
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let details = json!({"session_epoch": user.session_epoch});
            self.append_audit(&mut tx, actor, AuditEvent::new(action, "user", Some(user_id), details)).await?;
            tx.commit().await?;
            Ok(user)
        })
    }

    /// Records a successful login: the audit entry and the user's last login time, together.
    pub async fn record_login(&self, actor: &Actor, user_id: i64) -> StoreResult<()> {
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2").bind(now()).bind(user_id).execute(&mut *tx).await?;
            self.append_audit(&mut tx, actor, AuditEvent::new("auth.login", "user", Some(user_id), json!({}))).await?;
            tx.commit().await?;
            Ok(())
        })
    }
}
