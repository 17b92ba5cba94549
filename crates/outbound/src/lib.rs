//! Outbound calls to user-supplied endpoints: SSRF guard, signed HTTP delivery, SMTP.
