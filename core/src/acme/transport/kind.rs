//! What a request is: told from its method, its URL (the directory's
//! endpoints) and its JWS.

use super::*;

/// What a request is, for the retry policy, the rate cap and the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(in crate::acme) enum Kind {
    /// GET of the directory.
    Directory,
    /// HEAD (or GET) of newNonce.
    NewNonce,
    /// POST to newAccount.
    NewAccount,
    /// POST to newOrder.
    NewOrder,
    /// POST to revokeCert.
    Revoke,
    /// POST to keyChange.
    KeyChange,
    /// GET of renewal information.
    RenewalInfo,
    /// A POST-as-GET or another GET: reads a resource.
    Fetch,
    /// Any other POST with a payload: changes a resource (challenge ready,
    /// finalize, account update).
    Change,
}

impl Kind {
    /// Whether sending it twice is harmless.
    pub(in crate::acme) fn reads(self) -> bool {
        matches!(
            self,
            Kind::Directory | Kind::NewNonce | Kind::RenewalInfo | Kind::Fetch
        )
    }

    /// Whether an answer lost after sending may be recovered by sending the
    /// same request again: reads, and new-account (the same key gets the
    /// existing account).
    pub(in crate::acme) fn resend_when_lost(self) -> bool {
        self.reads() || self == Kind::NewAccount
    }

    pub(in crate::acme) fn rate_class(self) -> Kind {
        match self {
            Kind::Change | Kind::KeyChange => Kind::Fetch,
            other => other,
        }
    }
}

/// The endpoints of the directory, to classify requests.
#[derive(Debug, Default)]
pub(in crate::acme) struct Endpoints {
    pub(in crate::acme) new_nonce: String,
    pub(in crate::acme) new_account: String,
    pub(in crate::acme) new_order: String,
    pub(in crate::acme) revoke_cert: Option<String>,
    pub(in crate::acme) key_change: Option<String>,
    pub(in crate::acme) renewal_info: Option<String>,
}

/// Whether a POST body is a JWS with an empty payload (POST-as-GET), or no
/// JWS at all (then nothing in it can change state either).
pub(in crate::acme) fn jws_payload_is_empty(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Jws<'a> {
        #[serde(borrow, default)]
        payload: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Jws<'_>>(body) {
        Ok(jws) => jws.payload.is_none_or(|p| p.is_empty()),
        Err(_) => body.is_empty(),
    }
}
