//! The meaning of each value in `certsmith.toml`, checked.
//!
//! `parse.rs` has made sure every key is known and every value has the
//! right type; this pass checks what the values say: a server shortcut or
//! an https URL, an e-mail address, key types, durations, addresses,
//! domain names, certificate names and their uniqueness, that each
//! certificate has a solver. It reports every error it finds, each at its
//! value, with the defaults applied to the certificates on the way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::diagnostics::Diagnostics;
use super::parse::{RawCert, RawFile, RawOptions};
use super::{
    CertificateConfig, Config, Defaults, Located, MAX_CONCURRENCY, MAX_HOOK_TIMEOUT,
    MAX_RENEW_BEFORE, Pos, SecretString, SolverTable, format_duration, parse_duration,
};
use crate::dns::PropagationCheck;
use crate::identifiers::{self, Identifier};
use crate::keys::KeyType;

/// Checks `raw`, read from `path`, into a [`Config`]. Errors go to
/// `diagnostics`; the `Config` is only meaningful when there are none.
pub(super) fn check(raw: RawFile, path: &Path, diagnostics: &mut Diagnostics<'_>) -> Config {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Checker {
        path: path.to_owned(),
        diag: diagnostics,
        base,
    }
    .check(raw)
}

/// Solver options, with the position of each key.
fn solver_table(raw: Spanned<RawOptions>, diag: &Diagnostics<'_>) -> SolverTable {
    let mut t = SolverTable {
        pos: diag.pos(raw.span()),
        ..SolverTable::default()
    };
    for (k, v) in raw.into_inner() {
        t.positions.insert(k.get_ref().clone(), diag.pos(k.span()));
        t.options.insert(k.into_inner(), v);
    }
    t
}

/// `[solvers.<name>]`: its options, and `plugin = "<code>"` taken out of
/// them (a string naming a plugin).
fn instance_table(
    name: &str,
    raw: Spanned<RawOptions>,
    checker: &mut Checker<'_, '_>,
) -> SolverTable {
    let mut t = solver_table(raw, checker.diag);
    if let Some(v) = t.options.remove("plugin") {
        let pos = t.positions.remove("plugin").unwrap_or(t.pos);
        match v.as_str().map(str::trim) {
            Some(code) if !code.is_empty() => t.plugin = Some(code.to_owned()),
            _ => checker.diag.invalid_at(
                pos,
                format!("solvers.{name}.plugin"),
                "plugin must name a solver plugin".to_owned(),
                "write plugin = \"CODE\" (see `certsmith solvers list`), or remove it when the table's name is the plugin's code",
            ),
        }
    }
    t
}

struct Checker<'d, 'a> {
    path: PathBuf,
    diag: &'d mut Diagnostics<'a>,
    base: PathBuf,
}

impl Checker<'_, '_> {
    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: String, hint: &str) {
        self.diag.invalid(span, key, message, hint);
    }

    fn path_value(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn duration(&mut self, v: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(v.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    v.span(),
                    key,
                    format!("invalid duration '{}': {e}", v.get_ref()),
                    "write a duration such as \"30d\", \"12h\", \"90m\" or \"45s\"",
                );
                None
            }
        }
    }

    /// A `renew_before`: a duration shorter than [`MAX_RENEW_BEFORE`].
    /// A hook's timeout: a duration, not zero, at most a day.
    fn hook_timeout(&mut self, v: &Spanned<String>, key: &str) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d.is_zero() || d > MAX_HOOK_TIMEOUT {
            self.err(
                v.span(),
                key,
                format!("'{}' is not between 1s and 24h", v.get_ref()),
                "give each hook some time, e.g. \"120s\"",
            );
            return None;
        }
        Some(d)
    }

    /// A hook's command: not empty.
    fn hook(&mut self, v: &Option<Spanned<String>>, key: &str) -> Option<String> {
        let h = v.as_ref()?;
        if h.get_ref().trim().is_empty() {
            let field = key.rsplit('.').next().unwrap_or(key);
            self.err(
                h.span(),
                key,
                "the command is empty".to_owned(),
                &format!("remove {field} or give a shell command"),
            );
            return None;
        }
        Some(h.get_ref().clone())
    }

    fn renew_before(&mut self, v: &Spanned<String>, key: &str) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d >= MAX_RENEW_BEFORE {
            self.err(
                v.span(),
                key,
                format!(
                    "'{}' is longer than certificates live: it must be less than {}",
                    v.get_ref(),
                    format_duration(MAX_RENEW_BEFORE)
                ),
                "Let's Encrypt certificates live 90 days; remove renew_before to renew when 1/3 of the lifetime is left, or give e.g. \"30d\"",
            );
            return None;
        }
        Some(d)
    }

    fn propagation_check(&mut self, v: &Spanned<String>, key: &str) -> Option<PropagationCheck> {
        match v.get_ref().parse::<PropagationCheck>() {
            Ok(c) => Some(c),
            Err(e) => {
                self.err(
                    v.span(),
                    key,
                    e.to_string(),
                    "write \"authoritative\" (ask the zone's nameservers), \"recursive\" (ask the resolvers) or \"wait:30\" (wait 30 seconds, no check)",
                );
                None
            }
        }
    }

    fn key_type(&mut self, v: &Spanned<String>, key: &str) -> Option<KeyType> {
        match v.get_ref().parse::<KeyType>() {
            Ok(k) => Some(k),
            Err(_) => {
                let names: Vec<&str> = KeyType::ALL.iter().map(|k| k.as_str()).collect();
                let near = crate::plugin::nearest(v.get_ref(), names.iter().copied());
                let mut msg = format!("unknown key type '{}'", v.get_ref());
                if let Some(n) = near {
                    msg.push_str(&format!(": did you mean '{n}'?"));
                }
                self.err(
                    v.span(),
                    key,
                    msg,
                    "use one of ec-p256, ec-p384, rsa2048, rsa3072, rsa4096",
                );
                None
            }
        }
    }

    fn servers(&mut self, list: &[Spanned<String>], key: &str) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for s in list {
            match crate::dns::parse_server(s.get_ref()) {
                Some(a) => out.push(a),
                None => self.err(
                    s.span(),
                    key,
                    format!("'{}' is not IP or IP:PORT", s.get_ref()),
                    "write an address such as \"192.0.2.53\" or \"127.0.0.1:8053\"",
                ),
            }
        }
        out
    }

    fn check(&mut self, raw: RawFile) -> Config {
        let d = raw.defaults;
        let store_url = raw.store_url.as_ref().and_then(|u| {
            let ok = u.get_ref().starts_with("postgres://") || u.get_ref().starts_with("postgresql://");
            if !ok {
                self.err(
                    u.span(),
                    "store.url",
                    format!("'{}' is not a store URL", crate::store::redact_url(u.get_ref())),
                    "write postgres://USER@HOST/DATABASE (the password is better in CERTSMITH_STORE, which wins); for a directory use defaults.state_dir",
                );
            }
            ok.then(|| u.get_ref().clone())
        });
        let mut defaults = Defaults {
            store_url,
            agree_tos: d.agree_tos,
            follow_cname: d.follow_cname,
            ..Defaults::default()
        };
        if let Some(s) = &d.server {
            match crate::acme::resolve_server(s.get_ref()) {
                Ok(url) => defaults.server = Some(url),
                Err(e) => self.err(
                    s.span(),
                    "defaults.server",
                    e.to_string(),
                    "use letsencrypt, letsencrypt-staging, zerossl, or the https URL of an ACME directory",
                ),
            }
        }
        if let Some(p) = &d.ca_cert {
            let path = self.path_value(p.get_ref());
            if let Err(e) = std::fs::metadata(&path) {
                self.err(
                    p.span(),
                    "defaults.ca_cert",
                    format!("cannot read {}: {e}", path.display()),
                    "give the path of a PEM file (relative paths start at the config file's directory)",
                );
            }
            defaults.ca_cert = Some(path);
        }
        if let Some(e) = &d.email {
            let opts = crate::acme::AccountOptions {
                email: Some(e.get_ref().clone()),
                ..Default::default()
            };
            match opts.contact() {
                Ok(_) => defaults.email = Some(e.get_ref().trim().to_owned()),
                Err(_) => self.err(
                    e.span(),
                    "defaults.email",
                    format!("'{}' is not an e-mail address", e.get_ref()),
                    "give one address such as admin@example.com",
                ),
            }
        }
        defaults.eab_kid = d.eab_kid.map(Spanned::into_inner);
        defaults.eab_hmac_key = d.eab_hmac_key.map(|k| SecretString(k.into_inner()));
        if let Some(k) = &d.key_type {
            defaults.key_type = self.key_type(k, "defaults.key_type");
        }
        if let Some(s) = &d.state_dir {
            defaults.state_dir = Some(self.path_value(s.get_ref()));
        }
        for list in [raw.plugin_dirs.as_ref(), d.plugin_dirs.as_ref()]
            .into_iter()
            .flatten()
        {
            for p in list.get_ref() {
                defaults.plugin_dirs.push(self.path_value(p.get_ref()));
            }
        }
        if let Some(c) = &d.concurrency {
            let n = *c.get_ref();
            if n < 1 || n > MAX_CONCURRENCY as i128 {
                self.err(
                    c.span(),
                    "defaults.concurrency",
                    format!("{n} is out of range"),
                    "use a number from 1 to 1024",
                );
            } else {
                defaults.concurrency = usize::try_from(n).ok();
            }
        }
        if let Some(r) = &d.renew_before {
            defaults.renew_before = self.renew_before(r, "defaults.renew_before");
        }
        match (&d.hook_timeout, &d.deploy_hook_timeout) {
            (Some(_), Some(old)) => self.err(
                old.span(),
                "defaults.deploy_hook_timeout",
                "both hook_timeout and deploy_hook_timeout are set".to_owned(),
                "keep hook_timeout (deploy_hook_timeout is its older name) and remove deploy_hook_timeout",
            ),
            (Some(t), None) => {
                defaults.deploy_hook_timeout = self.hook_timeout(t, "defaults.hook_timeout");
            }
            (None, Some(t)) => {
                defaults.deploy_hook_timeout =
                    self.hook_timeout(t, "defaults.deploy_hook_timeout");
            }
            (None, None) => {}
        }
        defaults.pre_hook = self.hook(&d.pre_hook, "defaults.pre_hook");
        defaults.post_hook = self.hook(&d.post_hook, "defaults.post_hook");
        if let Some(t) = &d.propagation_timeout {
            defaults.propagation_timeout = self.duration(t, "defaults.propagation_timeout");
        }
        if let Some(c) = &d.propagation_check {
            defaults.propagation_check = self.propagation_check(c, "defaults.propagation_check");
        }
        if let Some(h) = &d.deploy_hook {
            if h.get_ref().trim().is_empty() {
                self.err(
                    h.span(),
                    "defaults.deploy_hook",
                    "the command is empty".to_owned(),
                    "remove deploy_hook or give a shell command",
                );
            } else {
                defaults.deploy_hook = Some(h.get_ref().clone());
            }
        }
        if let Some(list) = &d.dns_resolvers {
            defaults.dns_resolvers = self.servers(list.get_ref(), "defaults.dns_resolvers");
        }
        if let Some(list) = &d.propagation_servers {
            defaults.propagation_servers =
                self.servers(list.get_ref(), "defaults.propagation_servers");
        }
        if let Some(s) = &d.solver {
            defaults.solver = Some(Located {
                value: s.get_ref().trim().to_owned(),
                pos: self.diag.pos(s.span()),
            });
        }

        let mut solvers = BTreeMap::new();
        for (name, table) in raw.solvers {
            let t = instance_table(&name, table, self);
            solvers.insert(name, t);
        }

        let mut certificates: Vec<CertificateConfig> = Vec::new();
        let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
        for raw_cert in raw.certificate {
            let span = raw_cert.span();
            let pos = self.diag.pos(span.clone());
            let raw_cert = raw_cert.into_inner();
            let index = raw_cert.index;
            let (name, checked) = self.check_cert(pos, raw_cert, &defaults);
            // Names must be unique, whether or not the rest is valid.
            if !name.is_empty() {
                if let Some(first) = seen.get(&name) {
                    let msg = format!(
                        "two certificates are named '{name}' (the other at line {})",
                        first.line
                    );
                    self.err(
                        span,
                        format!("certificate[{index}].name"),
                        msg,
                        "give each [[certificate]] its own name = \"...\"",
                    );
                    continue;
                }
                seen.insert(name, pos);
            }
            if let Some(c) = checked {
                certificates.push(c);
            }
        }
        Config {
            path: self.path.clone(),
            defaults,
            solvers,
            certificates,
        }
    }

    fn check_cert(
        &mut self,
        pos: Pos,
        raw: RawCert,
        defaults: &Defaults,
    ) -> (String, Option<CertificateConfig>) {
        let index = raw.index;
        let key = |f: &str| format!("certificate[{index}].{f}");
        let errors_before = self.diag.count();

        // `csr`: the user's CSR; its names are the certificate's, and
        // `domains`, if given too, must be the same.
        let csr = raw.csr.as_ref().and_then(|c| {
            let path = self.path_value(c.get_ref());
            let read = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|b| crate::keys::read_csr(&b).map_err(|e| format!("{}: {e}", path.display())));
            match read {
                Ok(csr) => Some(csr),
                Err(message) => {
                    self.err(
                        c.span(),
                        key("csr"),
                        message,
                        "give the path of a certificate signing request, PEM or DER (relative paths start at the config file's directory)",
                    );
                    None
                }
            }
        });
        let mut domains = Vec::new();
        if let Some(csr) = &csr {
            match identifiers::parse_domains(&csr.names) {
                Ok(ids) if raw.domains.get_ref().is_empty() => domains = ids,
                Ok(ids) => {
                    let mut a: Vec<&str> = ids.iter().map(Identifier::as_str).collect();
                    let mut b: Vec<String> = Vec::new();
                    for d in raw.domains.get_ref() {
                        if let Ok(id) = identifiers::parse_domain(d.get_ref()) {
                            b.push(id.as_str().to_owned());
                        }
                    }
                    a.sort_unstable();
                    a.dedup();
                    b.sort_unstable();
                    b.dedup();
                    if a != b {
                        self.err(
                            raw.domains.span(),
                            key("domains"),
                            format!(
                                "the CSR asks for {} but domains lists {}",
                                a.join(", "),
                                b.join(", ")
                            ),
                            "remove domains (the names come from the CSR), or list exactly the CSR's names",
                        );
                    }
                }
                Err(e) => {
                    if let Some(c) = &raw.csr {
                        self.err(
                            c.span(),
                            key("csr"),
                            format!("the CSR's names: {e}"),
                            "the CSR's subjectAltNames must be DNS names or IP addresses the CA can validate",
                        );
                    }
                }
            }
        }
        if raw.domains.get_ref().is_empty() && raw.csr.is_none() {
            self.err(
                raw.domains.span(),
                key("domains"),
                "the list is empty".to_owned(),
                "list at least one domain: domains = [\"example.com\"]",
            );
        }
        for d in raw.domains.get_ref() {
            match identifiers::parse_domains(std::slice::from_ref(d.get_ref())) {
                Ok(mut ids) => domains.append(&mut ids),
                Err(e) => self.err(
                    d.span(),
                    key("domains"),
                    e.to_string(),
                    "domains are DNS names such as example.com or *.example.com",
                ),
            }
        }
        // Duplicates are dropped, keeping the first.
        let mut unique: Vec<Identifier> = Vec::with_capacity(domains.len());
        for d in domains {
            if !unique.iter().any(|u| u.as_str() == d.as_str()) {
                unique.push(d);
            }
        }
        let domains = unique;

        let name = match &raw.name {
            Some(n) => {
                if let Err(e) = crate::store::check_cert_name(n.get_ref()) {
                    self.err(
                        n.span(),
                        key("name"),
                        e.to_string(),
                        "use a plain name such as example.com",
                    );
                }
                n.get_ref().clone()
            }
            None => identifiers::default_cert_name(&domains).unwrap_or_default(),
        };

        // The solver of each name: `solvers = { "<name>" = "<solver>" }`,
        // names from `domains` only, each once.
        let mut name_solvers: Vec<(String, String, Pos)> = Vec::new();
        if let Some(map) = &raw.solvers {
            for (name, solver) in map.get_ref() {
                let wanted = identifiers::parse_domains(std::slice::from_ref(name.get_ref()))
                    .ok()
                    .and_then(|mut ids| ids.pop());
                let field = format!("solvers.\"{}\"", name.get_ref());
                match wanted {
                    Some(id) if domains.iter().any(|d| d.as_str() == id.as_str()) => {
                        if solver.get_ref().trim().is_empty() {
                            self.err(
                                solver.span(),
                                key(&field),
                                "the solver is empty".to_owned(),
                                "name a solver (see `certsmith solvers list`) or a [solvers.<name>] table",
                            );
                        } else if name_solvers.iter().any(|(n, _, _)| n == id.as_str()) {
                            self.err(
                                name.span(),
                                key(&field),
                                format!("'{}' is given a solver twice", id.as_str()),
                                "keep one entry per name",
                            );
                        } else {
                            name_solvers.push((
                                id.as_str().to_owned(),
                                solver.get_ref().trim().to_owned(),
                                self.diag.pos(solver.span()),
                            ));
                        }
                    }
                    _ => self.err(
                        name.span(),
                        key(&field),
                        format!("'{}' is not one of this certificate's domains", name.get_ref()),
                        "the keys of solvers are names listed in domains, written the same way (\"*.example.com\" for the wildcard)",
                    ),
                }
            }
        }
        // In the order of `domains`: the first name's solver stands for a
        // certificate whose every name has its own.
        name_solvers.sort_by_key(|(n, _, _)| domains.iter().position(|d| d.as_str() == n));
        let unmapped: Vec<&str> = domains
            .iter()
            .map(Identifier::as_str)
            .filter(|d| !name_solvers.iter().any(|(n, _, _)| n == d))
            .collect();
        let (solver, solver_pos) = match (&raw.solver, &defaults.solver) {
            (Some(s), _) => (s.get_ref().trim().to_owned(), self.diag.pos(s.span())),
            (None, Some(d)) => (d.value.clone(), d.pos),
            (None, None) if unmapped.is_empty() && !name_solvers.is_empty() => {
                // Every name has its own: the first one's stands for the
                // certificate (and is recorded as its solver).
                let (_, s, p) = &name_solvers[0];
                (s.clone(), *p)
            }
            (None, None) if !name_solvers.is_empty() => {
                self.err(
                    raw.domains.span(),
                    key("solver"),
                    format!(
                        "no solver for {}: solvers does not name one for it and neither this certificate nor [defaults] has a solver",
                        unmapped.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
                    ),
                    "add the name to solvers = { ... }, or add solver = \"CODE\" for the names not listed",
                );
                (String::new(), pos)
            }
            (None, None) => {
                self.err(
                    raw.domains.span(),
                    key("solver"),
                    "no solver: neither this certificate nor [defaults] names one".to_owned(),
                    "add solver = \"CODE\" (see `certsmith solvers list`)",
                );
                (String::new(), pos)
            }
        };
        if raw
            .solver
            .as_ref()
            .is_some_and(|s| s.get_ref().trim().is_empty())
            && let Some(s) = &raw.solver
        {
            self.err(
                s.span(),
                key("solver"),
                "the solver code is empty".to_owned(),
                "name a solver (see `certsmith solvers list`)",
            );
        }

        let key_type = match (&raw.key_type, &csr) {
            (_, Some(c)) => Some(c.key_type),
            (Some(k), None) => self.key_type(k, &key("key_type")),
            (None, None) => Some(defaults.key_type.unwrap_or_default()),
        };
        let renew_before = match &raw.renew_before {
            Some(r) => self.renew_before(r, &key("renew_before")),
            None => None,
        };
        let propagation_check = match &raw.propagation_check {
            Some(c) => self.propagation_check(c, &key("propagation_check")),
            None => None,
        };
        let pre_hook = self.hook(&raw.pre_hook, &key("pre_hook"));
        let post_hook = self.hook(&raw.post_hook, &key("post_hook"));
        let hook_timeout = match &raw.hook_timeout {
            Some(t) => self.hook_timeout(t, &key("hook_timeout")),
            None => None,
        };
        let deploy_hook = match &raw.deploy_hook {
            Some(h) if h.get_ref().trim().is_empty() => {
                self.err(
                    h.span(),
                    key("deploy_hook"),
                    "the command is empty".to_owned(),
                    "remove deploy_hook or give a shell command",
                );
                None
            }
            Some(h) => Some(h.get_ref().clone()),
            None => None,
        };
        let mut order = crate::engine::OrderOptions::default();
        for c in raw.challenges.iter().flat_map(|l| l.get_ref()) {
            match certsmith_plugin_api::ChallengeType::parse(c.get_ref()) {
                Some(t) if order.challenges.contains(&t) => self.err(
                    c.span(),
                    key("challenges"),
                    format!("'{}' is listed twice", c.get_ref()),
                    "list each challenge type once, most preferred first",
                ),
                Some(t) => order.challenges.push(t),
                None => self.err(
                    c.span(),
                    key("challenges"),
                    format!("unknown challenge type '{}'", c.get_ref()),
                    "use http-01, tls-alpn-01 or dns-01, most preferred first: challenges = [\"tls-alpn-01\"]",
                ),
            }
        }
        order.reuse_key = raw.reuse_key.unwrap_or(false);
        if order.reuse_key
            && let Some(c) = &raw.csr
        {
            self.err(
                c.span(),
                key("reuse_key"),
                "reuse_key and csr together: with a CSR the key is yours, not certsmith's"
                    .to_owned(),
                "remove reuse_key (renewals send the same CSR, so the same key, anyway)",
            );
        }
        order.csr = csr;
        for (field, value, slot) in [
            (
                "preferred_chain",
                &raw.preferred_chain,
                &mut order.preferred_chain,
            ),
            ("profile", &raw.profile, &mut order.profile),
        ] {
            match value {
                Some(v) if v.get_ref().trim().is_empty() => self.err(
                    v.span(),
                    key(field),
                    "the value is empty".to_owned(),
                    if field == "profile" {
                        "name one of the CA's profiles (its directory lists them under meta.profiles), or remove profile"
                    } else {
                        "give the issuer common name of the chain wanted, e.g. \"ISRG Root X1\", or remove preferred_chain"
                    },
                ),
                Some(v) => *slot = Some(v.get_ref().trim().to_owned()),
                None => {}
            }
        }
        let solver_options = match raw.solver_options {
            Some(t) => solver_table(t, self.diag),
            None => SolverTable {
                pos,
                ..SolverTable::default()
            },
        };
        if self.diag.count() > errors_before {
            return (name, None);
        }
        let config = CertificateConfig {
            index,
            name: name.clone(),
            domains,
            solver,
            name_solvers,
            solver_options,
            key_type: key_type.unwrap_or_default(),
            deploy_hook,
            pre_hook,
            post_hook,
            hook_timeout,
            renew_before,
            propagation_check,
            order,
            pos,
            domains_pos: self.diag.pos(raw.domains.span()),
            solver_pos,
        };
        (name, Some(config))
    }
}
