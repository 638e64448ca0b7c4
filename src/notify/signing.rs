//! Standard Webhooks signing. STUB.
