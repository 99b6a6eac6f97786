//! PLACEHOLDER written by the lead so the CLI compiles; the engine engineer replaces this whole file.
#[derive(Debug, clap::Args)]
pub(crate) struct IssueArgs {}
pub(crate) async fn run(_global: &crate::GlobalArgs, _args: IssueArgs) -> u8 {
    crate::exit::INTERNAL
}
