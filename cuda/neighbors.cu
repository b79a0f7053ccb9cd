// The GPU neighbour list, with the CPU list's exact semantics (src/neighbors): every directed
// pair j -> i with an integer image n and 0 < |(r_j - r_i) + n . cell| <= radius, computed
// from the positions as given (unwrapped is fine), CSR by receiver, rows sorted by
// (source, image).
//
// 1. nl_bin: fractional coordinates in the binning basis, wrapped on periodic axes (the wrap
//    k is kept), bin of each atom, atoms per bin.
// 2. scan, nl_scatter: atoms sorted by bin.
// 3. nl_count, scan: edges per receiver -> row offsets.
// 4. nl_fill: each row's edges as sortable 64-bit keys (source, image in the wrapped frame);
//    nl_sort_rows sorts each row; nl_decode turns keys into sources and image shifts.

// Binning frame, computed by the host (src/backend/cuda/grid.rs, same layout).
struct Grid {
    double to_fractional[9];  // f[a] = sum_x r[x] to_fractional[3 x + a]
    double lattice[9];        // rows
    double origin[3];         // open axes: lowest coordinate
    double inverse_width[3];  // bins per fractional unit (periodic) or per Angstrom (open)
    int bins[3];
    int reach[3];             // bins searched on each side
    int periodic[3];
    int n_bins;
};

// Key layout: source in bits 30..61, wrapped-frame image (m + 512) in 10 bits per axis.
#define KEY_IMAGE_BIAS 512

// Largest number of bins searched on each side of an axis (the host refuses thinner cells):
// the image m of a searched bin lies within +-MAX_REACH, which must fit the key's 10 bits.
#ifndef MAX_REACH
#error "MAX_REACH must be defined by the host (-DMAX_REACH=...)"
#endif
static_assert(MAX_REACH < KEY_IMAGE_BIAS, "an image must fit the key's 10 bits per axis");

__device__ __forceinline__ int floor_div(int a, int b) {
    const int q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

extern "C" __global__ void nl_bin(int n, const double* __restrict__ positions, Grid grid,
                                  int* __restrict__ wraps, int* __restrict__ bins,
                                  i64* __restrict__ bin_counts) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int b[3];
    for (int a = 0; a < 3; ++a) {
        double f = positions[3 * i] * grid.to_fractional[a] +
                   positions[3 * i + 1] * grid.to_fractional[3 + a] +
                   positions[3 * i + 2] * grid.to_fractional[6 + a];
        int k = 0;
        if (grid.periodic[a]) {
            const double image = floor(f);
            f -= image;
            k = (int)image;
        }
        wraps[3 * i + a] = k;
        int raw = (int)floor((f - grid.origin[a]) * grid.inverse_width[a]);
        b[a] = min(max(raw, 0), grid.bins[a] - 1);
    }
    const int linear = (b[2] * grid.bins[1] + b[1]) * grid.bins[0] + b[0];
    bins[i] = linear;
    atomicAdd((unsigned long long*)&bin_counts[linear], 1ull);
}

extern "C" __global__ void nl_scatter(int n, const int* __restrict__ bins,
                                      i64* __restrict__ cursor, int* __restrict__ sorted) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const i64 slot = (i64)atomicAdd((unsigned long long*)&cursor[bins[i]], 1ull);
    sorted[slot] = i;
}

// Visits every atom image within `radius2` (squared) of receiver i; FILL writes keys from
// `out`, otherwise returns the count.
template <bool FILL>
__device__ i64 visit_neighbours(int i, const double* __restrict__ positions, const Grid& grid,
                                const int* __restrict__ wraps, const int* __restrict__ bins,
                                const i64* __restrict__ bin_start,
                                const int* __restrict__ sorted, double radius2,
                                u64* __restrict__ out) {
    const int linear = bins[i];
    const int home[3] = {linear % grid.bins[0], (linear / grid.bins[0]) % grid.bins[1],
                         linear / (grid.bins[0] * grid.bins[1])};
    const int ki[3] = {wraps[3 * i], wraps[3 * i + 1], wraps[3 * i + 2]};
    i64 count = 0;
    for (int dz = -grid.reach[2]; dz <= grid.reach[2]; ++dz) {
        for (int dy = -grid.reach[1]; dy <= grid.reach[1]; ++dy) {
            for (int dx = -grid.reach[0]; dx <= grid.reach[0]; ++dx) {
                const int delta[3] = {dx, dy, dz};
                int other[3], m[3];
                bool outside = false;
                for (int a = 0; a < 3; ++a) {
                    const int c = home[a] + delta[a];
                    if (grid.periodic[a]) {
                        m[a] = floor_div(c, grid.bins[a]);
                        other[a] = c - m[a] * grid.bins[a];
                    } else {
                        m[a] = 0;
                        other[a] = c;
                        outside |= c < 0 || c >= grid.bins[a];
                    }
                }
                if (outside) continue;
                const int bin = (other[2] * grid.bins[1] + other[1]) * grid.bins[0] + other[0];
                for (i64 slot = bin_start[bin]; slot < bin_start[bin + 1]; ++slot) {
                    const int j = sorted[slot];
                    const int n0 = m[0] + ki[0] - wraps[3 * j];
                    const int n1 = m[1] + ki[1] - wraps[3 * j + 1];
                    const int n2 = m[2] + ki[2] - wraps[3 * j + 2];
                    if (j == i && n0 == 0 && n1 == 0 && n2 == 0) continue;
                    double r[3];
                    edge_vector(positions, grid.lattice, i, j, n0, n1, n2, r);
                    if (squared_norm(r) <= radius2) {
                        if (FILL) {
                            out[count] = ((u64)j << 30) |
                                         ((u64)(m[0] + KEY_IMAGE_BIAS) << 20) |
                                         ((u64)(m[1] + KEY_IMAGE_BIAS) << 10) |
                                         (u64)(m[2] + KEY_IMAGE_BIAS);
                        }
                        ++count;
                    }
                }
            }
        }
    }
    return count;
}

extern "C" __global__ void nl_count(int n, const double* __restrict__ positions, Grid grid,
                                    const int* __restrict__ wraps, const int* __restrict__ bins,
                                    const i64* __restrict__ bin_start,
                                    const int* __restrict__ sorted, double radius2,
                                    i64* __restrict__ counts) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    counts[i] = visit_neighbours<false>(i, positions, grid, wraps, bins, bin_start, sorted,
                                        radius2, nullptr);
}

extern "C" __global__ void nl_fill(int n, const double* __restrict__ positions, Grid grid,
                                   const int* __restrict__ wraps, const int* __restrict__ bins,
                                   const i64* __restrict__ bin_start,
                                   const int* __restrict__ sorted, double radius2,
                                   const i64* __restrict__ offsets, i64 capacity,
                                   u64* __restrict__ keys, int* __restrict__ status) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (offsets[n] > capacity) {
        if (i == 0) status[STATUS_OVERFLOW] = 1;
        return;
    }
    visit_neighbours<true>(i, positions, grid, wraps, bins, bin_start, sorted, radius2,
                           keys + offsets[i]);
}

// One warp per row, SORT_WARPS rows per block: bitonic sort in shared memory for rows up to
// SORT_CAPACITY keys; longer rows (tiny cells with huge cutoffs) fall back to an insertion
// sort by one lane.
#define SORT_CAPACITY 1024
#ifndef SORT_WARPS
#error "SORT_WARPS must be defined by the host (-DSORT_WARPS=...)"
#endif

extern "C" __global__ void nl_sort_rows(int n, const i64* __restrict__ offsets,
                                        u64* __restrict__ keys, const int* __restrict__ status) {
    __shared__ u64 buffer[SORT_WARPS][SORT_CAPACITY];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * SORT_WARPS + warp;
    if (row >= n || status[STATUS_OVERFLOW]) return;
    u64* __restrict__ values = keys + offsets[row];
    const int length = (int)(offsets[row + 1] - offsets[row]);
    if (length <= 1) return;
    if (length > SORT_CAPACITY) {
        if (lane == 0) {
            for (int a = 1; a < length; ++a) {
                const u64 key = values[a];
                int b = a - 1;
                while (b >= 0 && values[b] > key) {
                    values[b + 1] = values[b];
                    --b;
                }
                values[b + 1] = key;
            }
        }
        return;
    }
    int size = 1;
    while (size < length) size <<= 1;
    u64* shared = buffer[warp];
    for (int a = lane; a < size; a += 32) shared[a] = a < length ? values[a] : ~0ull;
    __syncwarp();
    for (int k = 2; k <= size; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int a = lane; a < size; a += 32) {
                const int partner = a ^ j;
                if (partner > a) {
                    const bool ascending = (a & k) == 0;
                    const u64 left = shared[a], right = shared[partner];
                    if ((left > right) == ascending) {
                        shared[a] = right;
                        shared[partner] = left;
                    }
                }
            }
            __syncwarp();
        }
    }
    for (int a = lane; a < length; a += 32) values[a] = shared[a];
}

// Keys -> sources and image shifts for the positions as given: n = m + k_i - k_j.
extern "C" __global__ void nl_decode(int n, const i64* __restrict__ offsets,
                                     const u64* __restrict__ keys, const int* __restrict__ wraps,
                                     int* __restrict__ sources, int* __restrict__ shifts,
                                     const int* __restrict__ status) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || status[STATUS_OVERFLOW]) return;
    for (i64 e = offsets[i]; e < offsets[i + 1]; ++e) {
        const u64 key = keys[e];
        const int j = (int)(key >> 30);
        const int m[3] = {(int)((key >> 20) & 1023) - KEY_IMAGE_BIAS,
                          (int)((key >> 10) & 1023) - KEY_IMAGE_BIAS,
                          (int)(key & 1023) - KEY_IMAGE_BIAS};
        sources[e] = j;
        for (int a = 0; a < 3; ++a) shifts[3 * e + a] = m[a] + wraps[3 * i + a] - wraps[3 * j + a];
    }
}
