//! `cargo bench --workspace --bench auth`: what checking an API key costs per request
//! (SHA-256 of the presented key, then a constant-time compare against every listed hash).
//! Prints figures (it only checks that the key is accepted).

use std::hint::black_box;
use std::time::Instant;

use flightline_service::auth::{ApiKeys, hash_key};

fn main() {
    for listed in [1, 10, 100] {
        let file: String = (0..listed).map(|i| hash_key(&format!("key-{i}")) + "\n").collect();
        let keys = ApiKeys::parse(&file).expect("key file");
        let presented = format!("key-{}", listed - 1);
        let rounds = 200_000;
        let started = Instant::now();
        let mut allowed = 0;
        for _ in 0..rounds {
            allowed += usize::from(keys.allows(black_box(&presented)));
        }
        let per_check = started.elapsed().as_nanos() as f64 / rounds as f64;
        assert_eq!(allowed, rounds);
        println!("{listed:>4} keys listed: {per_check:>8.0} ns per check ({:.2} us)", per_check / 1000.0);
    }
}
