//! Home of tandem's criterion benchmarks (`cargo bench -p tandem-bench`): fan-out,
//! NACK cache, room broadcast, clock estimator. The benchmarks live in `benches/`.
