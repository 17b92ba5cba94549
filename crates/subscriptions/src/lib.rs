//! FHIR Subscriptions: topics, matching, notifications, channels, durable cursors.
