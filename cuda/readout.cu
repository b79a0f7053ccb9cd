// Forces, virials and the packed results buffer (float64) that the host copies back in one
// transfer:
//   [status (STATUS_WORDS)] [energy] [virial (9)] [forces (3n)] [energies (n)] [atom virials (9n)]
// Per-atom values are sums over each atom's row; totals are reduced by one block in a fixed
// order: deterministic.

// Values before the forces: the status words, the energy and the virial.
#ifndef RESULTS_HEADER
#error "RESULTS_HEADER must be defined by the host (-DRESULTS_HEADER=...)"
#endif
static_assert(RESULTS_HEADER == STATUS_WORDS + 10, "status words, energy, virial (9)");

// Forces F_i = sum over row i of (dE/dr_e - dE/dr_reverse(e)); the row's share of the virial
// -sum r_e (x) dE/dr_e; per-atom virials (half of each edge to each end) when wanted.
extern "C" __global__ void forces_virials(int n, const i64* __restrict__ offsets,
                                          const int* __restrict__ reverse,
                                          const float* __restrict__ geometry,
                                          const float* __restrict__ de_dr, int atom_virials,
                                          double* __restrict__ results,
                                          double* __restrict__ row_virials) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double f[3] = {0.0, 0.0, 0.0};
    double w[9] = {}, wa[9] = {};
    for (i64 e = offsets[i]; e < offsets[i + 1]; ++e) {
        const i64 back = reverse[e];
        const float* g = geometry + GEOMETRY_WIDTH * e;
        double ge[3], gb[3];
        for (int x = 0; x < 3; ++x) {
            ge[x] = (double)de_dr[3 * e + x];
            gb[x] = (double)de_dr[3 * back + x];
            f[x] += ge[x] - gb[x];
        }
        for (int a = 0; a < 3; ++a) {
            const double r = (double)g[4 + a];
            for (int b = 0; b < 3; ++b) {
                w[3 * a + b] -= r * ge[b];
                wa[3 * a + b] -= 0.5 * r * (ge[b] - gb[b]);
            }
        }
    }
    double* forces = results + RESULTS_HEADER;
    for (int x = 0; x < 3; ++x) forces[3 * (i64)i + x] = f[x];
    for (int k = 0; k < 9; ++k) row_virials[9 * (i64)i + k] = w[k];
    if (atom_virials) {
        double* out = results + RESULTS_HEADER + 4 * (i64)n + 9 * (i64)i;
        for (int k = 0; k < 9; ++k) out[k] = wa[k];
    }
}

// Per-atom energies (float64; 0 for ghosts) into the results.
extern "C" __global__ void energies_out(int n, int n_energy, const float* __restrict__ energies,
                                        double* __restrict__ results) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    results[RESULTS_HEADER + 3 * (i64)n + i] = i < n_energy ? (double)energies[i] : 0.0;
}

// One block of REDUCE_THREADS threads: total energy and virial, and the status words.
#ifndef REDUCE_THREADS
#error "REDUCE_THREADS must be defined by the host (-DREDUCE_THREADS=...)"
#endif
extern "C" __global__ void reduce_results(int n, int n_energy, const float* __restrict__ energies,
                                          const double* __restrict__ row_virials,
                                          const int* __restrict__ status,
                                          double* __restrict__ results) {
    __shared__ double partial[10][REDUCE_THREADS];
    const int t = threadIdx.x;
    double sums[10] = {};
    for (i64 i = t; i < n; i += REDUCE_THREADS) {
        if (i < n_energy) sums[0] += (double)energies[i];
        for (int k = 0; k < 9; ++k) sums[1 + k] += row_virials[9 * i + k];
    }
    for (int k = 0; k < 10; ++k) partial[k][t] = sums[k];
    __syncthreads();
    for (int stride = REDUCE_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            for (int k = 0; k < 10; ++k) partial[k][t] += partial[k][t + stride];
        }
        __syncthreads();
    }
    if (t < 10) results[STATUS_WORDS + t] = partial[t][0];
    if (t < STATUS_WORDS) results[t] = (double)status[t];
}

// Status words at the start of each evaluation: no overflow, no close pair (NO_CLOSE_EDGE),
// the two spare words 0.
static_assert(STATUS_WORDS == 4 && STATUS_OVERFLOW == 0 && STATUS_CLOSE_EDGE == 1,
              "status_reset sets words 0 and 1 and clears the spare words 2 and 3");
extern "C" __global__ void status_reset(int* status) {
    if (threadIdx.x == 0) {
        status[STATUS_OVERFLOW] = 0;
        status[STATUS_CLOSE_EDGE] = NO_CLOSE_EDGE;
        status[2] = 0;
        status[3] = 0;
    }
}
