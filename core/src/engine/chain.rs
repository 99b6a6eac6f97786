//! The certificate chain as the CA sends it, split and checked.

use time::OffsetDateTime;

use crate::error::IssueError;

/// A downloaded chain, split and inspected.
#[derive(Debug)]
pub(super) struct ParsedChain {
    pub(super) cert_pem: String,
    pub(super) chain_pem: String,
    pub(super) fullchain_pem: String,
    pub(super) not_before: OffsetDateTime,
    pub(super) not_after: OffsetDateTime,
    pub(super) serial: String,
}

/// Splits a PEM chain (leaf first,
/// [RFC 8555 §7.4.2](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2))
/// and reads the leaf's validity and serial.
pub(super) fn parse_chain(pem: &str, server: &str) -> Result<ParsedChain, IssueError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    const ACTION: &str = "download the certificate";
    let bad = |message: String| IssueError::bad_answer(ACTION, server, message);
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else {
            return Err(bad(
                "the certificate chain has an unterminated PEM block".to_owned()
            ));
        };
        let block = &after[..end + END.len()];
        blocks.push(format!("{}\n", block.trim_end()));
        rest = &after[end + END.len()..];
    }
    let Some(leaf) = blocks.first() else {
        return Err(bad("the CA sent no PEM certificate".to_owned()));
    };
    let facts = crate::renewal::read_cert_pem(leaf, "the leaf certificate")
        .map_err(|e| IssueError::network(ACTION, server, e))?;
    Ok(ParsedChain {
        cert_pem: leaf.clone(),
        chain_pem: blocks[1..].concat(),
        fullchain_pem: blocks.concat(),
        not_before: facts.not_before,
        not_after: facts.not_after,
        serial: facts.serial,
    })
}
