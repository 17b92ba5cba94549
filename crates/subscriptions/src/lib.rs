//! FHIR Subscriptions: the pure core (no I/O, no async) that the delivery runtime stands on.
//!
//! A subscription is a durable cursor over the event log: the runtime reads change events,
//! asks the [`SubscriptionIndex`] which subscriptions they notify, numbers them, and builds
//! the bodies with [`notification`]. This crate decides *what* is sent; the runtime decides
//! when and how.
//!
//! # Public API
//!
//! **Subscriptions** ([`spec`]):
//! - [`parse_subscription`]`(&Value, &Registry, &TopicRegistry) -> Result<SubscriptionSpec, Vec<Issue>>`:
//!   R4 classic (`criteria` = `Type?params`) and R4 + Backport IG (`criteria` = topic
//!   canonical, `backport-filter-criteria`, `backport-channel-type`, `backport-payload-content`,
//!   `backport-heartbeat-period`, `backport-timeout`, `backport-max-count`). The issues name
//!   everything Flare cannot honour; criteria that cannot be evaluated exactly are refused.
//! - [`SubscriptionSpec`] { id, status, end, reason, trigger: [`Trigger`], channel: [`Channel`] }.
//! - [`redact_for_read`]`(&Value) -> Value` masks `Authorization`-like headers and the HMAC
//!   secret; [`restore_redacted`]`(&mut Value, &Value)` keeps stored secrets on updates that
//!   echo the mask.
//!
//! **Topics** ([`topic`]): [`Topic::from_json`] (R4B/R5 `SubscriptionTopic`, or an R4 `Basic`
//! wrapping it: see the module docs), [`TopicRegistry`] (by canonical; [`TopicRegistry::with_builtins`]),
//! [`builtin_topics`] under `http://flare.dev/fhir/SubscriptionTopic/`,
//! [`Topic::include_references`] (`notificationShape.include` → references to read for
//! `additional-context`).
//!
//! **Matching** ([`matching`]): [`SubscriptionIndex`] with `insert`/`remove`/`matching(&MatchEvent)`
//! and `needs_previous(type)`: when it is true for an update's type the caller must pass the
//! previous version, or `queryCriteria.previous` is judged as for a create.
//!
//! Not here (the delivery runtime's): event numbering and cursors, status transitions,
//! handshake/heartbeat timing, retries, the network guard, HMAC signing, `end` expiry.
//!
//! **Notifications** ([`notification`]): [`notification_bundle`], [`status_resource`],
//! [`status_search_bundle`] (`$status`), [`batches`] (`maxCount`), [`classic_rest_hook`].
//!
//! **Websocket frames** ([`websocket`]): [`parse_client_frame`] for the four dialects,
//! [`bound_frame`], [`ping_frame`], [`token_from_query`].

pub mod criteria;
pub mod delivery;
pub mod matching;
pub mod notification;
pub mod spec;
pub mod topic;
pub mod websocket;

pub use criteria::{ClassicCriteria, parse_classic_criteria, parse_search_criteria};
pub use matching::{IndexError, MatchEvent, SubscriptionIndex, equal_without_meta};
pub use notification::{
    ClassicRequest, NotificationEvent, NotificationType, ResourceRef, StatusInfo, batches,
    classic_rest_hook, notification_bundle, status_resource, status_search_bundle,
};
pub use spec::{
    BodyFormat, Channel, ChannelType, ContentLevel, Header, NotificationVersion, Payload,
    SubscriptionSpec, SubscriptionStatus, TopicFilter, Trigger, parse_subscription,
    parse_topic_filter, redact_for_read, restore_redacted,
};
pub use topic::{Interaction, Topic, TopicRegistry, builtin_topics};
pub use websocket::{ClientFrame, bound_frame, parse_client_frame, ping_frame, token_from_query};
