//! The parts of `--help` that clap cannot derive: the heading of the
//! global options, the help flag, and an "Examples" section per command.
//!
//! Why this module exists: a new user reads `certsmith <command> --help`
//! before any documentation, so every command's help must separate what
//! the command takes from what every command takes, and show a real
//! invocation. `-h` and `--help` print the same text, one line per option
//! (clap's short form, which lists a value's possible values without
//! describing each): clap's default split would make `--help` a different,
//! three-times-longer page, which is what the issue reported as hard to
//! scan.
//! The examples are kept here, side by side, so that they stay consistent
//! with each other; a test renders every command's help and fails on a
//! command without them.

use clap::{Arg, ArgAction, Command};

/// The heading under which the global options are listed.
pub(crate) const GLOBAL_HEADING: &str = "Global options";

/// Makes `-h` and `--help` print the same (short-form) help in every
/// command.
pub(crate) fn same_help_for_short_and_long(cmd: Command) -> Command {
    cmd.disable_help_flag(true).arg(
        Arg::new("help")
            .short('h')
            .long("help")
            .help("Print help")
            .action(ArgAction::HelpShort)
            .global(true),
    )
}

/// `certsmith --help`.
pub(crate) const ROOT: &str = "\
Examples:
  # A certificate for two names, the CA validating over port 80
  certsmith issue -d example.com -d www.example.com --solver standalone \\
      --email admin@example.com --agree-tos

  # Every certificate of the config file that is due (cron, systemd, CI)
  certsmith run

Every global option can also be set by its CERTSMITH_* variable (shown in each
command's help); the command line wins. Without --config, certsmith uses
$XDG_CONFIG_HOME/certsmith/certsmith.toml (else ~/.config/certsmith/certsmith.toml),
else /etc/certsmith/certsmith.toml, and says which.";

/// `certsmith issue --help`.
pub(crate) const ISSUE: &str = "\
Examples:
  # http-01 on port 80, no web server running
  certsmith issue -d example.com -d www.example.com --solver standalone \\
      --email admin@example.com --agree-tos

  # A web server already serves /var/www/html
  certsmith issue -d example.com --solver webroot --solver-opt path=/var/www/html --agree-tos

  # A wildcard (dns-01); the token comes from the environment
  CLOUDFLARE_API_TOKEN=... certsmith issue -d example.com -d '*.example.com' \\
      --solver cloudflare --agree-tos

  # Against Let's Encrypt's staging CA, settings from the environment
  export CERTSMITH_SERVER=letsencrypt-staging CERTSMITH_EMAIL=admin@example.com CERTSMITH_AGREE_TOS=1
  certsmith issue -d example.com --solver standalone

  # tls-alpn-01 on port 443 only; renewals keep the key (TLSA)
  certsmith issue -d example.com --solver standalone --solver-opt tls_listen=0.0.0.0:443 \\
      --challenge tls-alpn-01 --reuse-key --agree-tos

  # Your own CSR (the key stays with you); an IP address certificate
  certsmith issue --csr example.com.csr --solver webroot --solver-opt path=/var/www/html
  certsmith issue -d 192.0.2.1 --solver standalone --profile shortlived

  # A solver per name: the wildcard through DNS, www through the web server
  certsmith issue -d '*.example.com' -d www.example.com --agree-tos \\
      --solver webroot --solver-opt webroot:path=/var/www/html \\
      --solver '*.example.com=cloudflare'

  # Port 80 held by nginx: stop it around the challenges, reload after
  certsmith issue -d example.com --solver standalone --agree-tos \\
      --pre-hook 'systemctl stop nginx' --post-hook 'systemctl start nginx' \\
      --deploy-hook 'systemctl reload nginx'

  # Try it all against Let's Encrypt's staging CA; nothing is stored
  certsmith issue -d example.com --solver standalone --agree-tos --dry-run";

/// `certsmith run --help`.
pub(crate) const RUN: &str = "\
Examples:
  # The config from --config, CERTSMITH_CONFIG, ~/.config/certsmith or /etc/certsmith
  certsmith run

  # From a systemd timer: spread the load, JSON results for the journal
  certsmith run --config /etc/certsmith/certsmith.toml --jitter 300 --output json

  # Renew one certificate of the file now
  certsmith run --cert-name www --force

  # What would change, tried against the staging CA; nothing is stored
  certsmith run --dry-run";

/// `certsmith daemon --help`.
pub(crate) const DAEMON: &str = "\
Examples:
  # Under systemd: every certificate of the file, metrics for Prometheus
  certsmith daemon --config /etc/certsmith/certsmith.toml --metrics-listen 127.0.0.1:9415

  # Several daemons sharing one store each take what is due, never the same certificate
  certsmith daemon --store postgres://certsmith@db/certsmith --check-interval 10m

  # Reload the config file; stop (orders in flight finish, up to --shutdown-grace)
  kill -HUP $(pidof certsmith); kill -TERM $(pidof certsmith)

/metrics serves certsmith_certificates{state}, certsmith_certificate_expiry_seconds{name},
certsmith_orders_total{result}, certsmith_solver_seconds (a histogram by solver) and
certsmith_ca_requests_total{status}; /healthz answers 200 \"ok\" while the loop runs and
the store is readable, else 503 and why.";

/// `certsmith renew --help`.
pub(crate) const RENEW: &str = "\
Examples:
  # Every stored certificate that is due
  certsmith renew --all

  # One certificate, now, due or not
  certsmith renew --cert-name example.com --force

  # Would every renewal still work? Tried against the staging CA, nothing stored
  certsmith renew --all --dry-run";

/// `certsmith revoke --help`.
pub(crate) const REVOKE: &str = "\
Examples:
  # With the account that issued it
  certsmith revoke --cert-name example.com --reason superseded

  # The account is lost: sign with the certificate's own key
  certsmith revoke --cert-name example.com --reason key-compromise \\
      --key-file /var/lib/certsmith/certs/example.com/current/privkey.pem";

/// `certsmith list --help`.
pub(crate) const DELETE: &str = "\
Examples:
  # Retire a certificate and remove it with its files
  certsmith delete --cert-name old.example.com

  # Stop renewing it but keep the PEM files where they are
  certsmith delete --cert-name old.example.com --keep-files";

pub(crate) const RENAME: &str = "\
Examples:
  # The files move with it: update the paths your servers read
  certsmith rename _.example.com wildcard.example.com";

pub(crate) const LIST: &str = "\
Examples:
  # A table (tab-separated when stdout is not a terminal)
  certsmith list

  # One JSON object per certificate, for monitoring
  certsmith list --output json --cert-name example.com";

/// `certsmith sync --help`.
pub(crate) const SYNC: &str = "\
Examples:
  # Once: every certificate of the state directory into /etc/ssl/certsmith
  certsmith sync --state-dir /var/lib/certsmith --to /etc/ssl/certsmith

  # A web node of a fleet: two certificates from the shared store, nginx
  # reloaded after each change, a pass every 5 minutes until stopped
  certsmith sync --store postgres://web@db.internal/certsmith --to /etc/ssl/certsmith \\
      --name example.com --name api.example.com \\
      --deploy-hook 'systemctl reload nginx' --follow --interval 5m

Servers read DIR/certs/NAME/current/fullchain.pem and privkey.pem; current is
switched atomically to a complete version. No account key is copied.";

/// `certsmith store --help`.
pub(crate) const STORE: &str = "\
Examples:
  # A state directory into a fleet's database, and back
  certsmith store migrate --from /var/lib/certsmith --to postgres://certsmith@db/certsmith
  certsmith store migrate --from postgres://certsmith@db/certsmith --to /var/lib/certsmith-copy";

/// `certsmith store migrate --help`.
pub(crate) const STORE_MIGRATE: &str = "\
Examples:
  # Copy a state directory into another (created if needed), then verify it
  certsmith store migrate --from /var/lib/certsmith --to /srv/certsmith-state

  # Into a fleet's database (stop certsmith runs on the source first)
  certsmith store migrate --from /var/lib/certsmith --to postgres://certsmith@db/certsmith

Nothing in the destination is replaced: a certificate of the same name, a
different account for the same CA or a different journal entry is refused,
naming it, before anything is copied.";

/// `certsmith store rotate-key --help`.
pub(crate) const STORE_ROTATE_KEY: &str = "\
Examples:
  # New key, then rotate (the old key stays in CERTSMITH_STORE_KEY)
  export CERTSMITH_STORE_NEW_KEY=$(openssl rand -base64 32)
  certsmith store rotate-key --store postgres://certsmith@db/certsmith

Everything is re-encrypted in one transaction; writers wait meanwhile.
Afterwards give every certsmith using the store the new key: a process
still holding the old one refuses to write, and cannot read private keys.";

/// `certsmith account --help`.
pub(crate) const ACCOUNT: &str = "\
Examples:
  certsmith account list
  certsmith account show --server letsencrypt
  certsmith account rollover --server letsencrypt
  certsmith account deactivate --yes";

/// `certsmith account list --help`.
pub(crate) const ACCOUNT_LIST: &str = "\
Examples:
  # Every stored account, the one in use for each CA marked
  certsmith account list

  # As JSON, one object per account
  certsmith account list --output json";

/// `certsmith account show --help`.
pub(crate) const ACCOUNT_SHOW: &str = "\
Examples:
  # The account of the only CA with one (else say which with --server)
  certsmith account show

  # The account for one CA
  certsmith account show --server letsencrypt-staging";

/// `certsmith account deactivate --help`.
pub(crate) const ACCOUNT_DEACTIVATE: &str = "\
Examples:
  # The account of the only CA with one, for good
  certsmith account deactivate --yes

  # The account of one CA
  certsmith account deactivate --server letsencrypt --yes";

/// `certsmith account rollover --help`.
pub(crate) const ACCOUNT_ROLLOVER: &str = "\
Examples:
  # A new key for the account of the only CA with one
  certsmith account rollover

  # For the account of one CA
  certsmith account rollover --server letsencrypt";

/// `certsmith config --help` and `certsmith config check --help`.
pub(crate) const CONFIG: &str = "\
Examples:
  # The config from --config, CERTSMITH_CONFIG, ~/.config/certsmith or /etc/certsmith
  certsmith config check

  # In CI, before deploying a config change
  certsmith config check --config certsmith.toml --output json";

/// `certsmith solvers --help`.
pub(crate) const SOLVERS: &str = "\
Examples:
  certsmith solvers list
  certsmith solvers info webroot";

/// `certsmith solvers list --help`.
pub(crate) const SOLVERS_LIST: &str = "\
Examples:
  certsmith solvers list
  certsmith solvers list --plugin-dir /opt/certsmith/plugins --output json";

/// `certsmith solvers info --help`.
pub(crate) const SOLVERS_INFO: &str = "\
Examples:
  # The options of the webroot solver, their variables and defaults
  certsmith solvers info webroot";

/// `certsmith plugin --help` and `certsmith plugin check --help`.
pub(crate) const PLUGIN: &str = "\
Examples:
  # An http-01 plugin on unprivileged ports
  certsmith plugin check target/release/libcertsmith_standalone.so \\
      --solver-opt listen=127.0.0.1:8080 --solver-opt tls_listen=127.0.0.1:8443

  # A dns-01 plugin, checking that its record is served
  certsmith plugin check ./libcertsmith_mydns.so --dns-server 127.0.0.1:53

  # ... in the zone found by SOA for a real domain, or in a zone you name
  certsmith plugin check ./libcertsmith_mydns.so --domain www.example.com --dns-server 192.0.2.53
  certsmith plugin check ./libcertsmith_mydns.so --domain www.example.com --zone example.com";

pub(crate) const PLUGIN_NEW: &str = "\
Examples:
  # A dns-01 plugin crate in ./certsmith-mydns, then build and check it
  certsmith plugin new mydns --dns
  cd certsmith-mydns && cargo build && certsmith plugin check target/debug/libcertsmith_mydns.so

  # An http-01 plugin crate in a directory of your choice
  certsmith plugin new mycdn --http ~/src/certsmith-mycdn";

/// `certsmith completions --help`.
pub(crate) const COMPLETIONS: &str = "\
Examples:
  # bash (needs the bash-completion package)
  certsmith completions bash > /usr/share/bash-completion/completions/certsmith

  # zsh: a directory on $fpath
  certsmith completions zsh > /usr/local/share/zsh/site-functions/_certsmith

  # fish
  certsmith completions fish > ~/.config/fish/completions/certsmith.fish";

/// `certsmith man --help`.
pub(crate) const MAN: &str = "\
Examples:
  # Every page, where man finds them
  certsmith man --dir /usr/local/share/man/man1

  # Read the main page without installing it
  certsmith man | man -l -";

/// `certsmith doctor --help`.
pub(crate) const DOCTOR: &str = "\
Examples:
  # Before the first run, or after changing the config or the machine
  certsmith doctor --config /etc/certsmith/certsmith.toml

  # In CI: exit 10 when a check fails, one JSON object with every check
  certsmith doctor --output json";
