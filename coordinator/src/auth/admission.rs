//! Admission: what every admin request passes before it does anything. The caller's rate
//! limit, then its token, then its roles; a denial is counted, logged at most once a second,
//! and for known users audited in the namespace it names. The users are reloaded on SIGHUP.

use super::*;

/// Every admin request passes here first: it counts the request against its caller's rate
/// limit, then names the actor or refuses the request.
///
/// A refusal of an unknown caller (no token, or a token of nobody) writes nothing anywhere but
/// a counter and, at most once a second, a log line: a stranger must cost nothing that lasts.
/// A known user's refusal is audited in the namespace it names, if that exists, within the
/// user's allowance of audited denials ([`Releases::audit_denial`]).
#[derive(Clone)]
pub struct Admission {
    /// The users in force, replaced whole by a reload of the `--auth` file; `None` while the
    /// admission is open (no `--auth`), which a reload never changes.
    users: Option<Arc<RwLock<Arc<Users>>>>,
    releases: Releases,
    rate_limit: Arc<RateLimiter>,
    unauthenticated_log: Arc<QuietLog>,
    rate_limited_log: Arc<QuietLog>,
}

impl Admission {
    /// An admission for `users`, with the default rate limit; without users (no `--auth`) it is
    /// open: every caller is an anonymous admin, named as it claims.
    pub fn new(users: Option<Users>, releases: Releases) -> Self {
        if let Some(users) = &users {
            metrics::gauge!(telemetry::AUTH_USERS).set(users.users().len() as f64);
        }
        Self {
            users: users.map(|users| Arc::new(RwLock::new(Arc::new(users)))),
            releases,
            rate_limit: Arc::new(RateLimiter::new(Rate {
                per_second: limits::DEFAULT_REQUESTS_PER_SECOND,
                burst: limits::DEFAULT_BURST,
            })),
            unauthenticated_log: Arc::new(QuietLog::new(QUIET_LOG_INTERVAL)),
            rate_limited_log: Arc::new(QuietLog::new(QUIET_LOG_INTERVAL)),
        }
    }

    /// The same admission with another rate limit.
    pub fn with_rate_limit(self, rate_limit: RateLimiter) -> Self {
        Self {
            rate_limit: Arc::new(rate_limit),
            ..self
        }
    }

    /// Whether admission admits everyone (no `--auth`).
    pub fn is_open(&self) -> bool {
        self.users.is_none()
    }

    /// The users in force now. A request works with one set of users from start to end,
    /// even when a reload replaces them meanwhile.
    fn users(&self) -> Option<Arc<Users>> {
        self.users.as_ref().map(|users| {
            // A poisoned lock only means a panic elsewhere while it was held; the Arc in it
            // is always a whole, checked set of users.
            users.read().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// Puts `users` in force for every request from now on, and returns the users they
    /// replace. An open admission stays open: it returns `None` and changes nothing.
    pub fn replace_users(&self, users: Users) -> Option<Arc<Users>> {
        let lock = self.users.as_ref()?;
        let mut current = lock.write().unwrap_or_else(PoisonError::into_inner);
        Some(std::mem::replace(&mut *current, Arc::new(users)))
    }

    /// Reads the `--auth` file again and puts its users in force. A file that does not check
    /// changes nothing: the error is logged naming the file and the problem, and counted.
    /// Returns whether the new users are in force.
    pub async fn reload(&self, path: &Path) -> bool {
        if self.is_open() {
            return false;
        }
        let file = path.to_path_buf();
        // The file is small (at most MAX_FILE_BYTES), but reading it is still blocking I/O.
        let loaded = tokio::task::spawn_blocking(move || Users::load(&file))
            .await
            .unwrap_or_else(|error| Err(anyhow::anyhow!("reading the file failed: {error}")));
        match loaded {
            Ok(users) => {
                let count = users.users().len();
                let change = self
                    .replace_users(users.clone())
                    .map(|before| describe_change(&before, &users))
                    .unwrap_or_default();
                metrics::counter!(telemetry::AUTH_RELOADS, "result" => "ok").increment(1);
                metrics::gauge!(telemetry::AUTH_USERS).set(count as f64);
                tracing::info!(file = %path.display(), users = count, %change, "auth file reloaded on SIGHUP");
                true
            }
            Err(error) => {
                metrics::counter!(telemetry::AUTH_RELOADS, "result" => "error").increment(1);
                tracing::error!(
                    file = %path.display(),
                    problem = %format!("{error:#}"),
                    "auth file not reloaded on SIGHUP: the previous users stay in force until the file checks and SIGHUP is sent again"
                );
                false
            }
        }
    }

    /// Admission's decision for `rpc` on `ns`, which touches nothing. While admission is open
    /// every caller is admitted, named as it claims.
    pub fn check(&self, credentials: &Credentials, rpc: Rpc, ns: &str) -> Result<Actor, Denial> {
        match self.users() {
            None => Ok(Actor {
                name: credentials
                    .claimed()
                    .unwrap_or_else(|| ANONYMOUS.to_string()),
            }),
            Some(users) => check(&users, credentials, rpc, ns),
        }
    }

    /// Who the rate limit counts this request against: the user its token names; without
    /// `--auth`, the token it presents (by its hash); else the address it came from. With
    /// `--auth` a token of nobody identifies no one (anyone can make up a new one for every
    /// request), so such requests count against their address.
    fn caller(&self, credentials: &Credentials) -> CallerKey {
        let token = credentials.bearer();
        match self.users() {
            Some(users) => match token.and_then(|token| users.authenticate(token)) {
                Some(user) => CallerKey::User(user.name.clone()),
                None => CallerKey::peer(credentials.peer),
            },
            None => match token {
                Some(token) => CallerKey::Token(sha256_hex(token.as_bytes())),
                None => CallerKey::peer(credentials.peer),
            },
        }
    }

    /// Counts a request against its caller's rate limit, or refuses it with the time to wait
    /// (`ResourceExhausted`, HTTP 429). Touches no etcd.
    pub fn limit(&self, credentials: &Credentials, rpc: Rpc) -> Result<()> {
        if !self.rate_limit.is_on() {
            return Ok(());
        }
        // Every sidecar of a fleet streams its outcomes with the one reporter credential, and
        // after a failover thousands open their streams to the new leader at once: counted by
        // the credential they would be one caller, refused for minutes. Each sidecar's address
        // is its own caller instead; the credential can do nothing else.
        let caller = if rpc == Rpc::ReportOutcomes {
            CallerKey::peer(credentials.peer)
        } else {
            self.caller(credentials)
        };
        let now = Instant::now();
        let Err(limited) = self.rate_limit.check(&caller, now) else {
            return Ok(());
        };
        metrics::counter!(telemetry::REQUESTS_RATE_LIMITED, "caller" => caller.kind()).increment(1);
        if let Some(suppressed) = self.rate_limited_log.allow(now) {
            tracing::info!(
                caller = %caller.describe(),
                rpc = rpc.name(),
                suppressed,
                "request over the caller's rate limit (switchboard_requests_rate_limited_total counts these; `suppressed` is how many such lines were left out since the last)"
            );
        }
        Err(CoordinatorError::RateLimited {
            message: format!(
                "rate limited: {} sent more than {} requests a second (bursts of {}); retry after {} s",
                caller.describe(),
                limited.rate.per_second,
                limited.rate.burst,
                limited.retry_after_seconds
            ),
            retry_after_seconds: limited.retry_after_seconds,
        })
    }

    /// Records a denial (see [`Admission`]) and returns its error. The denial is answered whatever
    /// becomes of its record.
    pub async fn refuse(
        &self,
        denial: Denial,
        credentials: &Credentials,
        rpc: Rpc,
        ns: &str,
    ) -> CoordinatorError {
        self.record_denial(&denial, credentials, rpc, ns).await;
        denial.error
    }

    /// Admission's first look at a request, from its headers alone, before its body is read:
    /// with `--auth`, a caller without a known token is refused here (rate limit first, as in
    /// [`Self::admit`]), counted, and its message never read, however large it says it is.
    /// A known caller goes on to [`Self::admit`], which knows the namespace. Returns whether the
    /// caller's roles permit `rpc` (in any namespace; roles are not per namespace; always
    /// without `--auth`), which sizes what the caller may send; nothing is recorded for that.
    pub fn authenticate_first(&self, credentials: &Credentials, rpc: Rpc) -> Result<bool> {
        let Some(users) = self.users() else {
            return Ok(true);
        };
        if let Some(user) = credentials
            .bearer()
            .and_then(|token| users.authenticate(token))
        {
            return Ok(permitted(&user.roles, rpc));
        }
        self.limit(credentials, rpc)?;
        match check(&users, credentials, rpc, "") {
            Err(denial) if denial.is_unauthenticated() => {
                self.count_unauthenticated(&denial, credentials, rpc);
                Err(denial.error)
            }
            _ => Ok(false),
        }
    }

    /// The actor of an allowed request; a request over its caller's rate limit is refused,
    /// and a denied one is recorded and refused.
    pub async fn admit(&self, credentials: &Credentials, rpc: Rpc, ns: &str) -> Result<Actor> {
        self.limit(credentials, rpc)?;
        match self.check(credentials, rpc, ns) {
            Ok(actor) => Ok(actor),
            Err(denial) => Err(self.refuse(denial, credentials, rpc, ns).await),
        }
    }

    /// Counts a denial of a caller without a known token, and logs it now and then. Nothing
    /// that such a caller sends reaches etcd or a log line of its own: the namespace it names,
    /// the name it claims and its token are not even looked at.
    fn count_unauthenticated(&self, denial: &Denial, credentials: &Credentials, rpc: Rpc) {
        metrics::counter!(
            telemetry::REQUESTS_DENIED,
            "rpc" => rpc.name(),
            "code" => denial.code(),
            "reason" => denial.reason
        )
        .increment(1);
        if let Some(suppressed) = self.unauthenticated_log.allow(Instant::now()) {
            tracing::info!(
                rpc = rpc.name(),
                reason = denial.reason,
                peer = ?credentials.peer,
                suppressed,
                "request denied: missing or unknown token (switchboard_requests_denied_total counts these; `suppressed` is how many such lines were left out since the last)"
            );
        }
    }

    async fn record_denial(&self, denial: &Denial, credentials: &Credentials, rpc: Rpc, ns: &str) {
        if denial.is_unauthenticated() {
            self.count_unauthenticated(denial, credentials, rpc);
            return;
        }
        let code = denial.code();
        metrics::counter!(
            telemetry::REQUESTS_DENIED,
            "rpc" => rpc.name(),
            "code" => code,
            "reason" => denial.reason
        )
        .increment(1);
        let detail = json!({
            "rpc": rpc.name(),
            "code": code,
            "roles": denial.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        });
        self.releases
            .audit_denial(
                ns,
                &denial.actor,
                rpc.name(),
                &denial.error.to_string(),
                detail,
            )
            .await;
    }
}

/// How often admission's quiet log lines may be written at most.
const QUIET_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads the `--auth` file on every SIGHUP until `shutdown` (see [`Admission::reload`]). A
/// coordinator without `--auth` has no file to reload; it logs that and carries on, rather
/// than ending as a process does on a SIGHUP it does not handle. `hangups` is set up by the
/// caller before the listeners open, so that no SIGHUP arrives before it is handled.
pub async fn reload_on_hangup(
    admission: Admission,
    file: Option<PathBuf>,
    mut hangups: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
            }
        }
        match &file {
            Some(file) => {
                admission.reload(file).await;
            }
            None => tracing::warn!(
                "SIGHUP ignored: the coordinator runs without --auth, so there is no auth file to reload"
            ),
        }
    }
}
