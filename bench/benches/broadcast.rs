//! A room broadcast as tandem-signaling makes it: serialise the playback state once,
//! then queue the same bytes to every member's bounded outbound queue (10,000 members).

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use tandem_signaling::playback::Playback;
use tokio::sync::mpsc;

/// The shape of the room's per-connection queue item (`conn::Outbound::Text`).
#[allow(dead_code)]
enum Outbound {
    Text(Utf8Bytes, Instant),
}

fn serialise(p: &Playback, seq: u64) -> Utf8Bytes {
    let mut v = p.to_json(Some("host-user"));
    v.insert("type".into(), "playback.state".into());
    v.insert("by".into(), "host-user".into());
    v.insert("reason".into(), "command".into());
    v.insert("seq".into(), seq.into());
    Utf8Bytes::from(Value::Object(v).to_string())
}

fn bench(c: &mut Criterion) {
    let p = Playback::new(1_732_250_000_123.0);
    let mut g = c.benchmark_group("room_broadcast");
    g.bench_function("serialise playback.state", |b| {
        let mut seq = 0;
        b.iter(|| {
            seq += 1;
            black_box(serialise(&p, seq))
        })
    });
    for members in [1_000usize, 10_000] {
        let (txs, mut rxs): (Vec<_>, Vec<_>) =
            (0..members).map(|_| mpsc::channel::<Outbound>(256)).unzip();
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(
            BenchmarkId::new("serialise once + enqueue", members),
            &members,
            |b, _| {
                let mut seq = 0;
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        seq += 1;
                        let t = Instant::now();
                        let bytes = serialise(&p, seq);
                        let now = Instant::now();
                        let mut full = 0usize;
                        for tx in &txs {
                            if tx.try_send(Outbound::Text(bytes.clone(), now)).is_err() {
                                full += 1;
                            }
                        }
                        total += t.elapsed();
                        black_box(full);
                        // The writers' side, outside the measurement.
                        for rx in rxs.iter_mut() {
                            while rx.try_recv().is_ok() {}
                        }
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
