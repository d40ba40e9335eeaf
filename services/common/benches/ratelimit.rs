//! `cargo bench --workspace --bench ratelimit`: what the per-client rate limit costs per request
//! (one lock, one hash-map lookup, a few integer operations), with one client and with the table
//! full of 10,000 clients, on one thread and on four at once; then a whole request through a
//! service's router (`server::app`) with the limiter off and on. Prints figures.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use flightline_service::ratelimit::{ClientKey, RateLimiter};

const ROUNDS: u32 = 1_000_000;

fn client(n: u32) -> ClientKey {
    ClientKey::address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)))
}

/// ns per check over `ROUNDS` checks spread over `clients` clients, on `threads` threads at once.
fn measure(clients: u32, threads: u32) -> f64 {
    // A rate no client reaches, so every check takes the "allowed" path that real traffic takes.
    let limiter = Arc::new(RateLimiter::new(1_000_000_000, 1_000_000_000).expect("limiter"));
    for n in 0..clients {
        limiter.check(client(n)).expect("under the rate");
    }
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let limiter = limiter.clone();
            std::thread::spawn(move || {
                for i in 0..ROUNDS / threads {
                    let _ = black_box(limiter.check(client((i * 7919 + t) % clients)));
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().expect("worker"));
    started.elapsed().as_nanos() as f64 / f64::from(ROUNDS)
}

fn main() {
    for (clients, threads) in [(1, 1), (10_000, 1), (10_000, 4)] {
        let per_request = measure(clients, threads);
        println!("{clients:>6} clients, {threads} thread(s): {per_request:>6.0} ns per request (wall time / requests)");
    }
    let principal = ClientKey::principal("sub:some-team-service-account");
    let limiter = RateLimiter::new(1_000_000_000, 1_000_000_000).expect("limiter");
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let _ = black_box(limiter.check(principal.clone()));
    }
    let per_request = started.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
    println!("     1 principal, 1 thread: {per_request:>6.0} ns per request (key clone included)");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // Alternated and the best of three each, as other work on the machine adds noise.
    let (mut off, mut on) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        off = off.min(runtime.block_on(through_router(0)));
        on = on.min(runtime.block_on(through_router(1_000_000_000)));
    }
    println!("router, limiter off: {off:>6.0} ns per request; on: {on:>6.0} ns (+{:.0} ns)", on - off);
}

/// ns per `GET /v1/x` through the whole router (metrics, body deadline, gate, concurrency, timeout).
async fn through_router(requests_per_second: u32) -> f64 {
    use axum::body::Body;
    use axum::routing::get;
    use flightline_service::config::HttpLimits;
    use flightline_service::server::{ReadyCheck, Telemetry, app};
    use tower::ServiceExt;
    let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let limits = HttpLimits { requests_per_second, burst: u32::MAX, ..HttpLimits::QUERY };
    let router = axum::Router::new().route("/v1/x", get(|| async { "x" }));
    let router = app(router, Telemetry::new("bench"), ready, None, limits);
    let rounds = 200_000u32;
    let started = Instant::now();
    for _ in 0..rounds {
        let request = axum::http::Request::get("/v1/x").body(Body::empty()).expect("request");
        let response = router.clone().oneshot(request).await.expect("response");
        assert!(response.status().is_success());
    }
    started.elapsed().as_nanos() as f64 / f64::from(rounds)
}
