//! FHIRcast hub: subscriptions, contexts, content sharing, WebSocket and webhook channels.
