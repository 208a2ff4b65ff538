//! The plugin's own Vault session: logging in (or adopting an operator's
//! token), learning the token's lifetime, renewing it before it ends,
//! logging in again when it cannot be renewed, noticing a new token in a
//! token file, and revoking a token of its own at shutdown.
//!
//! It does not read credentials ([`super::database`], [`super::kv`]) nor
//! decide when the Redis lease moves ([`crate::credentials::rotation`]).

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};
use vaultrs::{
    api::AuthInfo,
    client::{Client, VaultClient},
};

use super::{
    client::build_client,
    error::VaultError,
    files::secret_from,
    login::{JWT_FILE, Login, ROLE_ID_FILE, SECRET_ID_FILE, TOKEN_FILE, check_files},
};
use crate::{
    backoff::Backoff,
    config::VaultConfig,
    credentials::lease::{self, Grant, Renewal},
    secret::Secret,
};

/// How often a configured token file is checked for a new token.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(5);

/// What we know about the plugin's own token.
#[derive(Clone, Copy, Debug)]
struct TokenTimes {
    ttl: Duration,
    /// False when Vault will not extend it: log in again instead.
    renewable: bool,
    /// Next renewal or new login (`None`: the token never expires).
    next: Option<Instant>,
    /// Past this, failing renewals give way to a new login.
    deadline: Instant,
}

impl TokenTimes {
    fn new(now: Instant, ttl: Duration, renewable: bool, fraction: f64) -> Self {
        let ttl = ttl.min(lease::MAX_TTL);
        let grant = Grant { ttl, renewable };
        let plan = lease::plan(now, Some(&grant), fraction);
        let next = (plan.step != lease::Step::Hold).then_some(plan.at);
        Self {
            ttl,
            renewable,
            next,
            deadline: lease::renew_deadline(lease::expiry(now, ttl), ttl, fraction),
        }
    }
}

/// A logged-in (or not yet) client and what is known of its token.
pub(super) struct Session {
    client: VaultClient,
    login: Login,
    fraction: f64,
    logged_in: bool,
    token: TokenTimes,
    /// The token last read from `token_file`, to notice a new one.
    file_token: Secret,
    next_file_poll: Option<Instant>,
    backoff: Backoff,
}

// === impl Session ===

impl Session {
    /// A session for `v`: checks the credential files and builds the
    /// client; does not contact Vault yet.
    pub(super) fn new(v: &VaultConfig) -> Result<Self, VaultError> {
        let login = Login::from_config(v);
        check_files(&login)?;
        let next_file_poll = matches!(login, Login::Token { file: Some(_), .. }).then(Instant::now);
        Ok(Self {
            client: build_client(v)?,
            login,
            fraction: v.renew_fraction,
            logged_in: false,
            // Unknown until the first login, which the first fetch does.
            token: TokenTimes {
                ttl: Duration::ZERO,
                renewable: false,
                next: None,
                deadline: Instant::now(),
            },
            file_token: Secret::default(),
            next_file_poll,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        })
    }

    /// The client, with the session's token set.
    pub(super) fn client(&self) -> &VaultClient {
        &self.client
    }

    /// True when a new token can be obtained without an operator.
    pub(super) fn can_relogin(&self) -> bool {
        self.login.can_relogin()
    }

    /// Logs in (or adopts the configured token) and learns its lifetime.
    pub(super) async fn login(&mut self) -> Result<(), VaultError> {
        let now = Instant::now();
        let auth = match &self.login {
            Login::Token { inline, file } => {
                let token = secret_from(inline, file.as_deref(), TOKEN_FILE).await?;
                self.file_token = token.clone();
                self.client.set_token(token.expose());
                self.adopt_token(now).await?;
                self.logged_in = true;
                return Ok(());
            }
            Login::AppRole {
                mount,
                role_id,
                role_id_file,
                secret_id,
                secret_id_file,
            } => {
                let role_id = secret_from(role_id, role_id_file.as_deref(), ROLE_ID_FILE).await?;
                let secret_id =
                    secret_from(secret_id, secret_id_file.as_deref(), SECRET_ID_FILE).await?;
                vaultrs::auth::approle::login(
                    &self.client,
                    mount,
                    role_id.expose(),
                    secret_id.expose(),
                )
                .await
            }
            Login::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = secret_from(&Secret::default(), Some(jwt_file), JWT_FILE).await?;
                vaultrs::auth::kubernetes::login(&self.client, mount, role, jwt.expose()).await
            }
            Login::Cert { mount, role } => {
                vaultrs::auth::cert::login(&self.client, mount, role).await
            }
        }
        .map_err(|e| VaultError::from_client("login", e))?;
        self.client.set_token(&auth.client_token);
        self.logged_in = true;
        self.token = TokenTimes::new(
            now,
            lease::ttl_from_secs(auth.lease_duration),
            auth.renewable,
            self.fraction,
        );
        info!(method = self.login.name(), ttl = ?self.token.ttl, "logged in to vault");
        Ok(())
    }

    /// Looks up a given token's TTL and renewability.
    async fn adopt_token(&mut self, now: Instant) -> Result<(), VaultError> {
        let me = vaultrs::token::lookup_self(&self.client)
            .await
            .map_err(|e| VaultError::from_client("token lookup", e))?;
        let ttl = lease::ttl_from_secs(me.ttl);
        let renewable = me.renewable.unwrap_or(false);
        self.token = TokenTimes::new(now, ttl, renewable, self.fraction);
        // Renew by the TTL the token was created with, not what is left.
        self.token.ttl = lease::ttl_from_secs(me.creation_ttl.max(me.ttl));
        info!(method = "token", ttl = ?ttl, renewable, "using vault token");
        Ok(())
    }

    /// Renews the plugin's token; re-logs in when it cannot be extended.
    /// Returns true after a new login.
    async fn renew_token(&mut self) -> Result<bool, VaultError> {
        if !self.token.renewable {
            return self.relogin_or_give_up().await;
        }
        let now = Instant::now();
        let asked = self.token.ttl;
        let increment = format!("{}s", asked.as_secs());
        let result = vaultrs::token::renew_self(&self.client, Some(&increment)).await;
        match result.map_err(|e| VaultError::from_client("token renew", e)) {
            Ok(auth) => self.token_renewed(now, asked, &auth).await,
            Err(e) if now >= self.token.deadline || e.is_permanent() => {
                warn!(error = %e, "vault token cannot be renewed");
                self.relogin_or_give_up().await
            }
            Err(e) => {
                let retry = (now + self.backoff.next_delay()).min(self.token.deadline);
                self.token.next = Some(retry);
                Err(e)
            }
        }
    }

    async fn token_renewed(
        &mut self,
        now: Instant,
        asked: Duration,
        auth: &AuthInfo,
    ) -> Result<bool, VaultError> {
        self.backoff.reset();
        let grant = Grant {
            ttl: lease::ttl_from_secs(auth.lease_duration),
            renewable: auth.renewable,
        };
        match lease::renewal(asked, &grant) {
            Renewal::Extended => {
                // Time the next renewal by what was granted; keep asking
                // for the original TTL.
                let granted = grant.ttl.min(asked);
                self.token = TokenTimes::new(now, granted, true, self.fraction);
                self.token.ttl = asked;
                Ok(false)
            }
            Renewal::Exhausted => {
                info!(left = ?grant.ttl, "vault token reached its max TTL");
                self.relogin_or_give_up().await
            }
        }
    }

    async fn relogin_or_give_up(&mut self) -> Result<bool, VaultError> {
        if let Login::Token { .. } = self.login {
            // A token cannot log in by itself; a new one may appear in its file.
            if self.poll_token_file().await? {
                return Ok(true);
            }
            warn!("vault token cannot be extended; it expires unless a new one is provided");
            self.token.next = None;
            return Ok(false);
        }
        match self.login().await {
            Ok(()) => Ok(true),
            Err(e) => {
                self.token.next = Some(Instant::now() + self.backoff.next_delay());
                Err(e)
            }
        }
    }

    /// With a token file: adopts a new token when the file changes.
    async fn poll_token_file(&mut self) -> Result<bool, VaultError> {
        let Login::Token {
            file: Some(path), ..
        } = &self.login
        else {
            return Ok(false);
        };
        self.next_file_poll = Some(Instant::now() + TOKEN_FILE_POLL);
        let token = secret_from(&Secret::default(), Some(path), TOKEN_FILE).await?;
        if token == self.file_token || token.is_empty() {
            return Ok(false);
        }
        info!("vault token file changed; using the new token");
        self.login().await?;
        Ok(true)
    }

    pub(super) async fn ensure_logged_in(&mut self) -> Result<(), VaultError> {
        if !self.logged_in {
            self.login().await?;
        }
        Ok(())
    }

    /// When the token next needs renewal, or the token file a look.
    pub(super) fn due(&self) -> Option<Instant> {
        match (self.token.next, self.next_file_poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Renews or replaces the token if due; `Ok(true)` after a new login.
    pub(super) async fn upkeep(&mut self) -> Result<bool, VaultError> {
        let now = Instant::now();
        if !self.logged_in {
            // The first fetch logs in.
            return Ok(false);
        }
        if self.next_file_poll.is_some_and(|t| t <= now) && self.poll_token_file().await? {
            return Ok(true);
        }
        if self.token.next.is_some_and(|t| t <= now) {
            return self.renew_token().await;
        }
        Ok(false)
    }

    /// Revokes the token if it came from our own login; `Ok(false)` when
    /// there was none or it is the operator's.
    pub(super) async fn end(&mut self) -> Result<bool, VaultError> {
        // The operator's token (inline or token_file) is theirs to revoke:
        // it may be shared or meant to outlive this process. A token from
        // our own login is used by nobody else; leaving it would keep a
        // live credential in Vault until its TTL.
        if !self.logged_in || !self.login.owns_token() {
            return Ok(false);
        }
        vaultrs::token::revoke_self(&self.client)
            .await
            .map_err(|e| VaultError::from_client("token revoke", e))?;
        self.logged_in = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_times_plan_renewal_or_a_new_login() {
        let now = Instant::now();
        let t = TokenTimes::new(now, Duration::from_secs(30), true, 0.5);
        assert_eq!(t.next, Some(now + Duration::from_secs(15)));
        assert_eq!(t.deadline, now + Duration::from_millis(22_500));
        // Not renewable: the same point is when to log in again.
        let t = TokenTimes::new(now, Duration::from_secs(30), false, 0.5);
        assert_eq!(t.next, Some(now + Duration::from_secs(15)));
        assert!(!t.renewable);
        // A root token (TTL 0) never needs renewal.
        let t = TokenTimes::new(now, Duration::ZERO, true, 0.5);
        assert_eq!(t.next, None);
    }

    #[test]
    fn a_huge_token_ttl_is_clamped() {
        let now = Instant::now();
        let t = TokenTimes::new(now, Duration::from_secs(u64::MAX), true, 0.5);
        assert_eq!(t.ttl, lease::MAX_TTL);
        assert_eq!(t.next, Some(now + lease::MAX_TTL / 2));
    }
}
