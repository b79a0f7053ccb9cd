// From the neighbour list (built with cutoff + skin, reused across steps) to the graph the
// model runs on: the edges within the cutoff for the current positions, their geometry in
// float32 ([d, u_x, u_y, u_z, r_x, r_y, r_z, k, t], u = r / (d + U_EPSILON), and the filter-table
// interval k and position t with d = (k + t) h, all computed in float64 as on the CPU), and
// the reverse of each edge (the backward pass gathers through it). Pairs of two atoms from
// first_ghost on are left out (an evaluation with a per-layer ghost exchange computes no
// ghost row; first_ghost = n keeps every pair), as on the CPU.

extern "C" __global__ void graph_count(int n, const double* __restrict__ positions,
                                       const double* __restrict__ lattice,
                                       const i64* __restrict__ offsets,
                                       const int* __restrict__ sources,
                                       const int* __restrict__ shifts, double cutoff2,
                                       int first_ghost, i64* __restrict__ counts,
                                       int* __restrict__ status) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (status[STATUS_OVERFLOW]) {
        // The neighbour list is incomplete (cannot happen, see common.cuh): an empty graph.
        counts[i] = 0;
        return;
    }
    i64 count = 0;
    for (i64 e = offsets[i]; e < offsets[i + 1]; ++e) {
        if (i >= first_ghost && sources[e] >= first_ghost) continue;
        double r[3];
        edge_vector(positions, lattice, i, sources[e], shifts[3 * e], shifts[3 * e + 1],
                    shifts[3 * e + 2], r);
        const double d2 = squared_norm(r);
        count += d2 <= cutoff2;
        if (d2 < MINIMUM_DISTANCE * MINIMUM_DISTANCE) atomicMin(&status[STATUS_CLOSE_EDGE], (int)e);
    }
    counts[i] = count;
}

extern "C" __global__ void graph_fill(int n, const double* __restrict__ positions,
                                      const double* __restrict__ lattice,
                                      const i64* __restrict__ offsets,
                                      const int* __restrict__ sources,
                                      const int* __restrict__ shifts, double cutoff2,
                                      int first_ghost, const i64* __restrict__ graph_offsets,
                                      int* __restrict__ graph_sources,
                                      int* __restrict__ graph_shifts,
                                      float* __restrict__ geometry, double spacing,
                                      int intervals, const int* __restrict__ status) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || status[STATUS_OVERFLOW]) return;
    i64 out = graph_offsets[i];
    for (i64 e = offsets[i]; e < offsets[i + 1]; ++e) {
        if (i >= first_ghost && sources[e] >= first_ghost) continue;
        double r[3];
        edge_vector(positions, lattice, i, sources[e], shifts[3 * e], shifts[3 * e + 1],
                    shifts[3 * e + 2], r);
        const double d2 = squared_norm(r);
        if (d2 > cutoff2) continue;
        graph_sources[out] = sources[e];
        for (int a = 0; a < 3; ++a) graph_shifts[3 * out + a] = shifts[3 * e + a];
        const double d = sqrt(d2);
        const double inverse = 1.0 / (d + U_EPSILON);
        float* g = geometry + GEOMETRY_WIDTH * out;
        g[0] = (float)d;
        for (int a = 0; a < 3; ++a) {
            g[1 + a] = (float)(r[a] * inverse);
            g[4 + a] = (float)r[a];
        }
        const double x = d / spacing;
        const double k = fmin(fmax(floor(x), 0.0), (double)(intervals - 1));
        g[7] = (float)k;
        g[8] = (float)(x - k);
        ++out;
    }
}

// reverse[e] for e = (i <- j, n) is the index of (j <- i, -n) in row j (rows are sorted by
// source, then image). A warp per row, a lane per edge: the binary searches run side by side.
extern "C" __global__ void graph_reverse(int n, const i64* __restrict__ offsets,
                                         const int* __restrict__ sources,
                                         const int* __restrict__ shifts,
                                         int* __restrict__ reverse) {
    const i64 thread = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 row = thread >> 5;
    if (row >= n) return;
    const int i = (int)row;
    for (i64 e = offsets[i] + (thread & 31); e < offsets[i + 1]; e += 32) {
        const int j = sources[e];
        const int key[4] = {i, -shifts[3 * e], -shifts[3 * e + 1], -shifts[3 * e + 2]};
        i64 lo = offsets[j], hi = offsets[j + 1];
        while (lo < hi) {
            const i64 middle = (lo + hi) >> 1;
            const int probe[4] = {sources[middle], shifts[3 * middle], shifts[3 * middle + 1],
                                  shifts[3 * middle + 2]};
            bool less = false;
            for (int a = 0; a < 4; ++a) {
                if (probe[a] != key[a]) {
                    less = probe[a] < key[a];
                    break;
                }
            }
            if (less) lo = middle + 1; else hi = middle;
        }
        reverse[e] = (int)lo;
    }
}
