//! Outbound calls to user-supplied endpoints: SSRF guard, signed HTTP delivery, SMTP.
//!
//! FHIR Subscriptions (rest-hook, email) and the FHIRcast hub (webhook callbacks) call
//! endpoints that users give Flare. Every such call goes through this crate:
//!
//! - [`EndpointPolicy`] decides which URLs may be called: `https` to public addresses, and
//!   anything to networks on the [`AllowList`] (`--subscription-allow 127.0.0.0/8`). Checked
//!   on the URL, after DNS resolution (every address) and on every redirect.
//! - [`Deliverer`] makes the HTTP calls (`POST` with an optional `X-Hub-Signature`, `GET`
//!   for FHIRcast intent verification) and reports each as an [`Outcome`] value.
//! - [`Mailer`] sends `mailto:` notifications over SMTP.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use flare_outbound::{AllowList, Deliverer, DeliveryConfig, EndpointPolicy, Post, Secret};
//! let policy = EndpointPolicy::new("127.0.0.0/8".parse::<AllowList>()?);
//! let deliverer = Deliverer::new(policy, DeliveryConfig::default())?;
//! let post = Post::new("http://127.0.0.1:9000/hook", "application/fhir+json", "{}".into())
//!     .signed_with(Secret::from("per-subscription secret"));
//! let delivery = deliverer.post(&post).await;
//! if !delivery.outcome.is_success() && delivery.outcome.is_retryable() { /* retry later */ }
//! # Ok(()) }
//! ```

pub mod http;
pub mod policy;
pub mod signature;
pub mod smtp;

pub use http::{
    BuildError, Deliverer, Delivery, DeliveryConfig, IntentResult, IntentVerification, Outcome,
    Post, WriteMethod,
};
pub use policy::{
    AddressClass, AllowList, CheckedUrl, EndpointPolicy, EndpointPolicyConfig, HostLookup,
    InvalidAllowEntry, Refusal, SystemLookup, classify,
};
pub use signature::{
    SIGNATURE_HEADER, Secret, hmac_sha256_hex, hub_signature, verify_hub_signature,
};
pub use smtp::{Attachment, Mail, MailError, Mailer, SmtpConfig, SmtpSecurity, parse_recipient};
