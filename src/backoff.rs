//! Capped exponential backoff with jitter: the one formula every retry of the operator waits
//! by (a cloud call's retries, a failing object's requeue, the audit anchor's next publish).
//! Pure arithmetic: the caller sleeps.

use std::time::Duration;

use rand::Rng;

/// The wait before retry number `retry` (0 for the first retry): `base * 2^retry`, at most
/// `cap` (a cap below the base means the base), with "equal jitter": between half of that and
/// all of it, so the retries of many callers spread out but none fires at once.
pub fn delay(retry: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    // 2^16 of any base a retry starts from is past every cap in use (50 ms reaches 55 min).
    let exp = base.saturating_mul(2u32.saturating_pow(retry.min(16)));
    let ceiling = exp.min(cap).max(base);
    let half = ceiling / 2;
    let jitter_nanos = rng.random_range(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
    half + Duration::from_nanos(jitter_nanos)
}

/// The wait after `failures` failures in a row (1 for the first): [`delay`] of retry
/// `failures - 1`, drawn from the thread's generator.
pub fn after_failures(failures: u32, base: Duration, cap: Duration) -> Duration {
    delay(failures.saturating_sub(1), base, cap, &mut rand::rng())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for retry in 0..40 {
            let d = delay(retry, base, cap, &mut rng);
            let ceiling = base.saturating_mul(2u32.saturating_pow(retry)).min(cap);
            assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
        }
    }

    #[test]
    fn failures_count_from_one_and_a_cap_below_the_base_means_the_base() {
        let base = Duration::from_secs(1);
        assert!(after_failures(1, base, Duration::from_secs(60)) <= base);
        assert!(after_failures(10, base, Duration::from_secs(60)) >= Duration::from_secs(30));
        let d = after_failures(5, base, Duration::from_millis(10));
        assert!(d >= base / 2 && d <= base, "{d:?}");
    }
}
