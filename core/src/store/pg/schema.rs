//! The database schema of the PostgreSQL store, as numbered migrations.
//!
//! Why this module exists: a fleet upgrades its nodes one at a time, so the
//! schema must say which version it is and move forward in steps that each
//! apply once, in one transaction, under an advisory lock (two nodes
//! starting together do not both apply a step). A node older than the
//! schema refuses to write rather than guess.

/// Each migration: its number (1, 2, …, without gaps) and its statements.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE certsmith_meta (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
CREATE TABLE certsmith_accounts (
    ca_host text NOT NULL,
    id text NOT NULL,
    doc bytea NOT NULL,                 -- sealed: the document holds the account key
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ca_host, id)
);
CREATE TABLE certsmith_certs (
    name text PRIMARY KEY,
    lineage text NOT NULL,              -- lineage.toml, as the filesystem store writes it
    current_version integer,
    next_renewal timestamptz,           -- from the lineage, for queries
    rev bigint NOT NULL DEFAULT 0       -- bumped on every change (optimistic updates)
);
CREATE TABLE certsmith_versions (
    name text NOT NULL,                 -- no foreign key: `delete --keep-files` keeps versions
    version integer NOT NULL,
    cert_pem text NOT NULL,
    chain_pem text NOT NULL,
    fullchain_pem text NOT NULL,
    privkey bytea,                      -- sealed; NULL for a certificate of the user's CSR
    csr_pem text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
CREATE TABLE certsmith_pending_orders (
    name text PRIMARY KEY,
    order_url text NOT NULL,
    doc bytea NOT NULL                  -- sealed: holds the certificate's key
);
CREATE TABLE certsmith_journal (
    id text PRIMARY KEY,
    doc text NOT NULL
);
CREATE TABLE certsmith_rate_limits (
    id bigserial PRIMARY KEY,
    until timestamptz NOT NULL,
    doc text NOT NULL
);
CREATE TABLE certsmith_leases (
    scope text PRIMARY KEY,
    token bigint NOT NULL,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE SEQUENCE certsmith_lease_tokens;
"#,
)];

/// The newest schema version this certsmith knows.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, (n, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*n as usize, i + 1);
            assert!(!sql.trim().is_empty());
        }
        assert_eq!(latest() as usize, MIGRATIONS.len());
    }
}
