//! The shared rate limiter under a burst: 10,000 requests from 50 concurrent callers stay
//! within the simulator's budget (no 429 at all) and every caller completes. A control run
//! without the limiter shows the same burst does exceed the budget, so the test can fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crabglamp_operator::cloud::RateLimiter;
use crabglamp_sandbox::hetzner::HetznerSimConfig;

use crabglamp_testkit::cloud::*;

const CALLERS: usize = 50;
const PER_CALLER: usize = 200;
/// The simulator's budget: a burst of 300, refilled at 600 per second (a fast clock for
/// Hetzner's 3600 per hour), well below what this machine serves unthrottled (~1100/s in a
/// debug build on two cores), so a missing or broken limiter shows up as 429s. The burst is
/// the slack for requests the limiter released on time but the simulator served late: with
/// our burst of 10 at 540/s, a stall of up to ~0.5 s on a busy machine bunches them up
/// without a 429 (a burst of 30 left ~40 ms, and the test failed under load).
const BURST: u32 = 300;
const REFILL_PER_SEC: f64 = 600.0;
/// Our side: a smaller burst and a 10% slower refill, the headroom that absorbs requests
/// bunching up between the limiter and the server.
const CLIENT_BURST: u32 = 10;
const CLIENT_REFILL_PER_SEC: f64 = REFILL_PER_SEC * 0.9;
const CONTROL_CALLERS: usize = 100;
/// 4,000 unthrottled requests exceed a burst of 300 plus 600/s unless this machine serves
/// fewer than ~650 requests per second.
const CONTROL_PER_CALLER: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_10000_stays_within_budget() {
    let _alone = TIMING.write().await;
    let sim = hetzner_sim(HetznerSimConfig {
        rate_limit_per_hour: BURST,
        rate_refill_per_sec: Some(REFILL_PER_SEC),
        ..hz_config()
    })
    .await;

    // Control: callers with no limiter overrun the budget (see CONTROL_PER_CALLER for how
    // fast this machine must be for that; the assertion says so when it is not).
    let http = reqwest::Client::new();
    let start_line = Arc::new(tokio::sync::Barrier::new(CONTROL_CALLERS));
    let url = format!("{}/servers/1", sim.base_url);
    let control_started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONTROL_CALLERS {
        let (http, url, start_line) = (http.clone(), url.clone(), Arc::clone(&start_line));
        tasks.push(tokio::spawn(async move {
            start_line.wait().await;
            for _ in 0..CONTROL_PER_CALLER {
                let _ = http.get(&url).bearer_auth(HZ_TOKEN).send().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("control caller");
    }
    let rate = (CONTROL_CALLERS * CONTROL_PER_CALLER) as f64 / control_started.elapsed().as_secs_f64();
    println!("control burst: {rate:.0} requests/s, {} answered 429", sim.control().count_status(429));
    assert!(sim.control().count_status(429) > 0, "the control burst must exceed the budget ({rate:.0}/s)");

    // Let the simulator's bucket refill, then run the real burst through one shared limiter.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.control().budget_remaining() < BURST {
        assert!(Instant::now() < deadline, "the simulator's budget did not refill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_429 = sim.control().count_status(429);
    let before_total = sim.control().total_requests();
    let window = Duration::from_secs_f64(f64::from(CLIENT_BURST) / CLIENT_REFILL_PER_SEC);
    let limiter = Arc::new(RateLimiter::new(CLIENT_BURST, window));
    let client = Arc::new(hetzner_client_with(&sim, HZ_TOKEN, fast_retry(1), Arc::clone(&limiter)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let client = Arc::clone(&client);
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_CALLER {
                let found = client.get_server(1).await.expect("every call completes");
                assert!(found.is_none());
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let elapsed = started.elapsed();
    let sent = (sim.control().total_requests() - before_total) as usize;
    assert_eq!(sim.control().count_status(429) - before_429, 0, "no request over the budget");
    assert_eq!(sent, CALLERS * PER_CALLER, "one request per call, no retries needed");
    // 10,000 requests at 540/s after a burst of 10 cannot finish faster than ~18.5 s.
    let floor = Duration::from_secs_f64((CALLERS * PER_CALLER) as f64 / CLIENT_REFILL_PER_SEC * 0.99);
    assert!(elapsed >= floor, "finished in {elapsed:?}, faster than the budget allows");
    assert_eq!(client.metrics().requests("hetzner", "get_server", "not_found"), (CALLERS * PER_CALLER) as u64);
    sim.shutdown().await.unwrap();
}
