//! Neighbour-list build for periodic water boxes (0.1 atoms per cubic Angstrom), cutoff
//! 5 Angstrom, 10^3 to 10^6 atoms: a fresh build (new allocations, as a first call) and a
//! rebuild in place (what an MD step that re-neighbours costs), on one thread and on all.
//!
//! `cargo bench --bench neighbor_list`; throughput is reported in atoms per second.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use painn::structures::{water_box, water_box_side_for_atoms};
use painn::{Cell, NeighborList, NeighborListOptions};
use std::time::Duration;

fn neighbor_list(c: &mut Criterion) {
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let all_threads = rayon::ThreadPoolBuilder::new().build().unwrap();
    let mut group = c.benchmark_group("neighbor_list_water_cutoff5");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for n_target in [1_000usize, 10_000, 100_000, 1_000_000] {
        let water = water_box(water_box_side_for_atoms(n_target), 7);
        let cell = Cell::new(water.cell.unwrap(), [true; 3]).unwrap();
        let options = NeighborListOptions::new(5.0);
        group.throughput(Throughput::Elements(water.len() as u64));
        group.measurement_time(Duration::from_secs(if n_target >= 1_000_000 {
            30
        } else {
            5
        }));
        for (threads, pool) in [("1_thread", &one_thread), ("all_threads", &all_threads)] {
            group.bench_function(
                BenchmarkId::new(format!("build/{threads}"), water.len()),
                |b| {
                    b.iter(|| {
                        pool.install(|| {
                            NeighborList::build(&water.positions, &cell, options).unwrap()
                        })
                    })
                },
            );
            let mut list = NeighborList::build(&water.positions, &cell, options).unwrap();
            group.bench_function(
                BenchmarkId::new(format!("rebuild/{threads}"), water.len()),
                |b| b.iter(|| pool.install(|| list.rebuild(&water.positions, &cell).unwrap())),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, neighbor_list);
criterion_main!(benches);
