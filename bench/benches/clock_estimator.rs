//! The clock-offset estimator every sync client and the server run per ping/pong:
//! `clock::sample` and the NTP-style `ClockFilter` (lowest-RTT median of a window).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem_signaling::clock::{ClockFilter, sample};

fn bench(c: &mut Criterion) {
    let mut f = ClockFilter::default();
    let mut t = 1_732_250_000_000.0f64;
    let mut i = 0u64;
    c.bench_function("clock_filter add + estimate", |b| {
        b.iter(|| {
            i += 1;
            t += 2000.0;
            let jitter = (i % 7) as f64 * 0.8;
            let (offset, rtt) = sample(
                t,
                t + 5000.0 + jitter,
                t + 5000.2 + jitter,
                t + 2.0 + jitter,
            );
            f.add(offset, rtt);
            black_box(f.estimate())
        })
    });
    let mut big = ClockFilter::new(64, 8);
    c.bench_function("clock_filter(64,8) add + estimate", |b| {
        b.iter(|| {
            i += 1;
            let jitter = (i % 13) as f64 * 0.5;
            big.add(5000.0 + jitter, 1.0 + jitter);
            black_box(big.estimate())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
