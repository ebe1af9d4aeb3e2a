//! PostgreSQL: the audit trail, the usage timeline, virtual keys and sealed credentials.
