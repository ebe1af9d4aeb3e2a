//! Redis, the LLM proxy's cache: the auth entries the proxy looks keys up by, and the spend
//! counters it increments. The only code that talks to Redis. Redis holds no business data:
//! every value here is re-published or restored from PostgreSQL by the VirtualKey controller,
//! and the plaintext key never reaches Redis (only its SHA-256).
//!
//! # The contract with the proxy
//!
//! All key names start with a namespace, `cgk:` by default (`ControllerConfig::redis_namespace`),
//! written `{ns}` below. Money is integer **micro-USD** (1 USD = 1 000 000), so `INCRBY` is
//! exact. Months and days are calendar UTC (`YYYY-MM`, `YYYY-MM-DD`).
//!
//! | key | type | writer | TTL |
//! | --- | --- | --- | --- |
//! | `{ns}auth:{sha256}` | string (JSON) | operator | none (removed on revoke) |
//! | `{ns}spend:{budgetId}:{YYYY-MM}` | integer, micro-USD | proxy `INCRBY` | proxy sets 62 days |
//! | `{ns}usage:{budgetId}:{YYYY-MM-DD}` | hash of integers | proxy `HINCRBY` | proxy sets 40 days |
//! | `{ns}base:{budgetId}:{YYYY-MM}` | string `1` | operator only | 62 days |
//!
//! `{sha256}` is the lowercase hex SHA-256 of the whole key as presented (`Authorization:
//! Bearer cgk_...`). The auth entry's JSON:
//!
//! ```json
//! {"v":1,"keyId":"vk_5f0c...","budgetId":"<VirtualKey UID>","owner":"acct_7f3a",
//!  "models":["gpt-4o*"],"rateLimitRpm":60,"expiresAt":"2027-06-30T00:00:00Z",
//!  "blocked":false,"blockedReason":null}
//! ```
//!
//! `rateLimitRpm` and `expiresAt` are `null` when unlimited; `blockedReason` is `null`,
//! `"BudgetExceeded"` or `"Expired"`. `models` are patterns where `*` matches any run of
//! characters. `budgetId` stays the same across key rotations, so rotating a key does not
//! reset its spend. Unknown fields must be ignored (later versions may add some; `v` changes
//! only for an incompatible change). After a rotation with a grace period the old key's entry
//! stays until the grace ends, carrying the new key's terms and block (only `keyId` differs, and
//! it follows them within a resync); then it is deleted like a revoked key's.
//!
//! The operator blocks a key (rewrites its entry with `blocked: true`) within one resync of
//! the monthly counter reaching the budget, and at `expiresAt` itself; it lifts the block when
//! the budget is raised or a new month starts (the new month's counter starts at zero). A
//! request or two past the budget between the counter crossing it and the next resync is the
//! accepted overshoot; a proxy that must not overshoot compares the counter itself.
//!
//! Per request the proxy must: look up `{ns}auth:{sha256}`; refuse when absent (unknown or
//! revoked key), when `blocked` is true, when `expiresAt` is past (do not wait for the
//! operator), when the model matches no pattern, or when more than `rateLimitRpm` requests
//! came in the current minute (the proxy's own counter, e.g. `{ns}rate:{budgetId}:{unix
//! minute}` with a 120 s TTL; the operator never reads it). After serving it adds the cost,
//! in one `MULTI`: `INCRBY {ns}spend:{budgetId}:{month} cost`, `EXPIRE ... 5356800`,
//! `HINCRBY {ns}usage:{budgetId}:{day} {surface}|{model}|cost cost`, `HINCRBY ...
//! {surface}|{model}|requests 1`, `EXPIRE ... 3456000`; `surface` is `llm` or `tts` (voice
//! requests use the same keys and shape).
//!
//! The operator never writes the proxy's counters except to restore them, in one atomic,
//! conditional Lua step per key ([`KeyCache::restore_batch`]): when `{ns}base:{budgetId}:{month}`
//! is missing (Redis lost its data, or the month is new), or the counter holds less than
//! PostgreSQL copied from it (Redis came back from an older snapshot), it raises the monthly
//! counter to what PostgreSQL holds for the month (and today's usage fields to its rows) and
//! sets the marker; otherwise it writes nothing. It raises, never adds, so no loss or rollback
//! makes spend exceed what was recorded; what the proxy counted between a loss and the restore
//! (at most one resync) is the undercount this accepts. Redis should run with `noeviction`.
//!
//! Every resync the operator also `SCAN`s `{ns}auth:*` and deletes the entries of keys
//! PostgreSQL knows as revoked (an older snapshot brings them back).

pub mod contract;
pub mod key_cache;

pub use contract::*;
pub use key_cache::KeyCache;
