//! Clients of the outside APIs (Hetzner Cloud, Cloudflare): typed requests, one retry
//! taxonomy for their errors, and the rate limiting shared by every caller of one account.
