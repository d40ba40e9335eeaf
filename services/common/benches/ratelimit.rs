//! `cargo bench --workspace --bench ratelimit`: what the per-client rate limit costs per request
//! (one lock, one hash-map lookup, a few integer operations), with one client and with the table
//! full of 10,000 clients, on one thread and on four at once. Prints figures.

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
}
