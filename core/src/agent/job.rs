//! One certificate of a batch: what was decided for it, and what happened.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::engine::{CertRequest, IssuedCert};
use crate::error::IssueError;
use crate::hooks::HookError;
use crate::renewal::{CertFacts, RenewReason};

/// What a batch does with one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Plan {
    /// Order it: it is missing or changed (or revoked). Says why.
    Issue(String),
    /// Order it: it is due (or forced). Says why.
    Renew(String),
    /// Nothing to do. Says why.
    Skip(String),
}

impl Plan {
    /// Whether the plan orders a certificate.
    pub fn orders(&self) -> bool {
        matches!(self, Plan::Issue(_) | Plan::Renew(_))
    }
}

/// Why a certificate of a batch failed. Cheap to clone: one failure to
/// reach the CA is every job's failure.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Preparing or running the order failed; `context` says which part
    /// of the description was at fault, when one was (`certificate[2].solver`).
    #[error("{}{source}", context.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Issue {
        /// The part of the description at fault.
        context: Option<String>,
        /// The error.
        #[source]
        source: Arc<IssueError>,
    },
    /// The certificate was stored, but its deploy hook failed.
    #[error(transparent)]
    Hook(Arc<HookError>),
    /// The stored description of the certificate cannot be used.
    #[error("{message}")]
    Invalid {
        /// What is wrong, naming the field.
        message: String,
    },
    /// A certificate is stored under this name with other names, key type
    /// or CA: ordering would replace it, which was not asked for.
    #[error("'{name}' is stored with other settings ({}); ordering would replace it", changes.join("; "))]
    Conflict {
        /// The certificate name.
        name: String,
        /// What differs, in words.
        changes: Vec<String>,
        /// Whether the only change is names added to the stored ones.
        superset: bool,
    },
    /// Not attempted: the run was interrupted first.
    #[error("not attempted: the run was interrupted")]
    NotAttempted,
}

impl JobError {
    /// Wraps an engine error with the part of the description at fault.
    pub fn context(context: impl Into<String>, e: impl Into<IssueError>) -> JobError {
        JobError::Issue {
            context: Some(context.into()),
            source: Arc::new(e.into()),
        }
    }

    /// The engine error, when that is what it is.
    pub fn issue_error(&self) -> Option<&IssueError> {
        match self {
            JobError::Issue { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<IssueError> for JobError {
    fn from(e: IssueError) -> Self {
        JobError::Issue {
            context: None,
            source: Arc::new(e),
        }
    }
}

/// The settings recorded in the lineage after an order, and the hook.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Settings {
    /// The extra CA bundle for the CA's HTTPS.
    pub ca_cert: Option<PathBuf>,
    /// The account's contact e-mail.
    pub email: Option<String>,
    /// The deploy hook command.
    pub deploy_hook: Option<String>,
    /// The timeout of each hook (default [`crate::config::DEFAULT_HOOK_TIMEOUT`]).
    pub hook_timeout: Option<Duration>,
    /// Run before the certificate's challenges are presented.
    pub pre_hook: Option<String>,
    /// Run after its challenges are cleaned up, whatever happened.
    pub post_hook: Option<String>,
    /// Renew when less than this is left.
    pub renew_before: Option<Duration>,
}

impl Settings {
    /// Settings with every field given.
    pub fn new(
        ca_cert: Option<PathBuf>,
        email: Option<String>,
        deploy_hook: Option<String>,
        hook_timeout: Option<Duration>,
        renew_before: Option<Duration>,
    ) -> Settings {
        Settings {
            ca_cert,
            email,
            deploy_hook,
            hook_timeout,
            renew_before,
            ..Settings::default()
        }
    }

    /// The same settings with a pre- and post-hook.
    pub fn with_hooks(mut self, pre_hook: Option<String>, post_hook: Option<String>) -> Settings {
        self.pre_hook = pre_hook;
        self.post_hook = post_hook;
        self
    }

    /// The timeout of each hook.
    pub fn hook_timeout(&self) -> Duration {
        self.hook_timeout
            .unwrap_or(crate::config::DEFAULT_HOOK_TIMEOUT)
    }

    /// The pre- and post-hook an order runs.
    pub fn order_hooks(&self) -> crate::hooks::OrderHooks {
        crate::hooks::OrderHooks::new(
            self.pre_hook.clone(),
            self.post_hook.clone(),
            self.hook_timeout(),
        )
    }
}

/// What happened to a job's order.
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The certificate, when it was obtained and stored.
    pub cert: Option<IssuedCert>,
    /// Why the order failed.
    pub error: Option<JobError>,
    /// The deploy hook's result, when one ran.
    pub hook: Option<Result<(), JobError>>,
    /// The post-hook's result, when one ran.
    pub post_hook: Option<Result<(), JobError>>,
}

/// One certificate of a batch.
#[non_exhaustive]
pub struct Job {
    /// The certificate name.
    pub name: String,
    /// Its identifiers.
    pub domains: Vec<String>,
    /// The decision, or why none could be made (bad solver options...).
    pub plan: Result<Plan, JobError>,
    /// The order to place, when the plan orders one.
    pub request: Option<CertRequest>,
    /// What to record and run after the order.
    pub settings: Settings,
    /// The current version, when there is one.
    pub facts: Option<CertFacts>,
    /// Where the current version's files are served from (a backend that
    /// keeps files), for a certificate already stored.
    pub current_dir: Option<PathBuf>,
    /// When it is next due, and why.
    pub next: Option<(OffsetDateTime, RenewReason)>,
    /// The RFC 9773 identifier of the version a renewal replaces.
    pub replaces: Option<String>,
    /// Filled in by [`crate::agent::Agent::execute`].
    pub outcome: Option<Outcome>,
    /// Whether the run already warned that `renew_before` does not fit
    /// this certificate's lifetime (once per job, not per schedule).
    pub(crate) renew_before_warned: bool,
}

impl Job {
    /// Commits this job's new version only while `lease` (the worker's
    /// [`crate::store::Storage::cert_lease`] on the certificate) is still
    /// current: a worker whose lease passed to another cannot publish.
    pub fn fence_with(&mut self, lease: &crate::store::Lease) {
        if let Some(request) = self.request.as_mut() {
            request.fence = Some(lease.token());
        }
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// A job with nothing decided yet.
    pub fn new(name: String, domains: Vec<String>) -> Job {
        Job {
            name,
            domains,
            plan: Ok(Plan::Skip(String::new())),
            request: None,
            settings: Settings::default(),
            facts: None,
            current_dir: None,
            next: None,
            replaces: None,
            outcome: None,
            renew_before_warned: false,
        }
    }

    /// Warns, once per job, when `sched` ignored `renew_before` because
    /// it is not shorter than the lifetime of the certificate `facts`
    /// describes.
    pub(crate) fn warn_renew_before(
        &mut self,
        sched: &crate::renewal::Schedule,
        facts: &CertFacts,
        renew_before: Option<Duration>,
    ) {
        let Some(margin) = renew_before.filter(|_| sched.renew_before_ignored) else {
            return;
        };
        if std::mem::replace(&mut self.renew_before_warned, true) {
            return;
        }
        let lifetime = Duration::try_from(facts.not_after - facts.not_before).unwrap_or_default();
        log::warn!(
            "{}: renew_before ({}) is not shorter than the certificate's lifetime ({}); renewing when 1/3 of the lifetime is left instead",
            self.name,
            crate::config::format_duration(margin),
            crate::config::format_duration(lifetime)
        );
    }

    /// Marks the job failed before any order.
    pub fn fail(&mut self, e: JobError) {
        self.plan = Err(e);
        self.request = None;
    }

    /// Plans an order of `request` for `why`.
    pub(crate) fn order(&mut self, plan: Plan, request: CertRequest) {
        self.plan = Ok(plan);
        self.request = Some(request);
    }

    /// What the batch did with it, as one word: `issued`, `renewed`,
    /// `skipped` or `failed`, with the detail and the failure, if any.
    pub fn result(&self) -> (&'static str, String, Option<&JobError>) {
        static NOT_ATTEMPTED: JobError = JobError::NotAttempted;
        match (&self.plan, &self.outcome) {
            (Err(f), _) => ("failed", String::new(), Some(f)),
            (Ok(Plan::Skip(why)), _) => ("skipped", why.clone(), None),
            (Ok(plan), Some(o)) => {
                let (verb, why) = match plan {
                    Plan::Issue(w) => ("issued", w),
                    Plan::Renew(w) | Plan::Skip(w) => ("renewed", w),
                };
                match (&o.error, &o.hook, &o.post_hook) {
                    (Some(f), _, _) => ("failed", why.clone(), Some(f)),
                    (None, Some(Err(f)), _) => {
                        (verb, format!("{why}; deploy hook failed"), Some(f))
                    }
                    (None, _, Some(Err(f))) => (verb, format!("{why}; post-hook failed"), Some(f)),
                    _ => (verb, why.clone(), None),
                }
            }
            (Ok(_), None) => ("failed", String::new(), Some(&NOT_ATTEMPTED)),
        }
    }
}
