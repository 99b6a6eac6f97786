//! What the bench targets (`issue`, `solvers`) share: reading their flags,
//! the median, and leaving with a message. A module, not a crate, because
//! each bench target is its own binary and these are a few lines.

/// The value after `name` in `args`, if any.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Prints `msg` and exits 2.
pub(crate) fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(2);
}

/// The median (the upper one of an even count); `v` must not be empty.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
