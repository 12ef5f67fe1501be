//! Home of tandem's criterion benchmarks (`cargo bench -p tandem-bench`).
//! The benchmarks themselves live in `benches/`.
