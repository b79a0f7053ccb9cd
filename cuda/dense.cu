// Dense layers: tiled float32 GEMMs (64 x 64 tiles, 16-deep slices, 256 threads, 4 x 4
// outputs per thread) and GEMMs for few rows, with the SiLU activation (forward) or its
// derivative (backward) applied in their epilogue. Each output sums over
// k in a fixed order: deterministic.

// Tile side and threads per block; the host sizes the grid from them.
#ifndef GEMM_TILE
#error "GEMM_TILE must be defined by the host (-DGEMM_TILE=...)"
#endif
#ifndef GEMM_THREADS
#error "GEMM_THREADS must be defined by the host (-DGEMM_THREADS=...)"
#endif
static_assert(GEMM_TILE == 64 && GEMM_THREADS == 256 && GEMM_FEW_ROWS <= GEMM_THREADS / 32,
              "the index arithmetic below assumes 64 x 64 tiles of 16 x 16 threads");

#define TILE_M GEMM_TILE
#define TILE_N GEMM_TILE
#define TILE_K 16

// The value written at (row, col): the sum, times silu'(silu_pre) when silu_pre is given
// (backward through an activation), added to C when accumulating; silu of it also written
// to `activated` when given (forward into an activation).
__device__ __forceinline__ void gemm_store(float value, i64 at, int accumulate,
                                           const float* __restrict__ silu_pre,
                                           float* __restrict__ c,
                                           float* __restrict__ activated) {
    if (silu_pre) value *= silu_derivative(silu_pre[at]);
    c[at] = accumulate ? c[at] + value : value;
    if (activated) activated[at] = silu(c[at]);
}

// C[M][N] = A[M][K] . op(B) (+ bias[N]) (+ C when accumulate), row-major; op(B) = B^T with
// B stored [N][K] (a Linear layer's weight: forward) when transposed, else B stored [K][N]
// (backward through a Linear layer). Epilogue: gemm_store.
template <bool TRANSPOSED>
__device__ void gemm(int m_rows, int n_cols, int k_depth, const float* __restrict__ a,
                     const float* __restrict__ b, const float* __restrict__ bias, int accumulate,
                     const float* __restrict__ silu_pre, float* __restrict__ c,
                     float* __restrict__ activated) {
    __shared__ float a_tile[TILE_K][TILE_M + 1];
    __shared__ float b_tile[TILE_K][TILE_N + 1];
    const int tid = threadIdx.x;
    const int tx = tid & 15, ty = tid >> 4;
    // Rows (atoms, possibly millions) on the x grid axis, which has no 65535 limit.
    const int row0 = blockIdx.x * TILE_M, col0 = blockIdx.y * TILE_N;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < k_depth; k0 += TILE_K) {
        for (int q = 0; q < 4; ++q) {
            const int index = tid + GEMM_THREADS * q;
            const int mm = index >> 4, kk = index & 15;
            const int row = row0 + mm, k = k0 + kk;
            a_tile[kk][mm] = (row < m_rows && k < k_depth) ? a[(i64)row * k_depth + k] : 0.0f;
            if (TRANSPOSED) {
                const int col = col0 + mm;
                b_tile[kk][mm] = (col < n_cols && k < k_depth) ? b[(i64)col * k_depth + k] : 0.0f;
            } else {
                const int kb = index >> 6, nb = index & 63;
                const int kg = k0 + kb, col = col0 + nb;
                b_tile[kb][nb] = (kg < k_depth && col < n_cols) ? b[(i64)kg * n_cols + col] : 0.0f;
            }
        }
        __syncthreads();
        for (int kk = 0; kk < TILE_K; ++kk) {
            float av[4], bv[4];
            for (int q = 0; q < 4; ++q) {
                av[q] = a_tile[kk][ty + 16 * q];
                bv[q] = b_tile[kk][tx + 16 * q];
            }
            for (int p = 0; p < 4; ++p)
                for (int q = 0; q < 4; ++q) acc[p][q] += av[p] * bv[q];
        }
        __syncthreads();
    }
    for (int p = 0; p < 4; ++p) {
        const int row = row0 + ty + 16 * p;
        if (row >= m_rows) continue;
        for (int q = 0; q < 4; ++q) {
            const int col = col0 + tx + 16 * q;
            if (col >= n_cols) continue;
            float value = acc[p][q];
            if (bias) value += bias[col];
            gemm_store(value, (i64)row * n_cols + col, accumulate, silu_pre, c, activated);
        }
    }
}

// activated (optional) = silu(c).
extern "C" __global__ void gemm_nt(int m_rows, int n_cols, int k_depth, const float* a,
                                   const float* b, const float* bias, int accumulate, float* c,
                                   float* activated) {
    gemm<true>(m_rows, n_cols, k_depth, a, b, bias, accumulate, nullptr, c, activated);
}

// silu_pre (optional): c = (a b) * silu'(silu_pre).
extern "C" __global__ void gemm_nn(int m_rows, int n_cols, int k_depth, const float* a,
                                   const float* b, const float* silu_pre, int accumulate,
                                   float* c) {
    gemm<false>(m_rows, n_cols, k_depth, a, b, nullptr, accumulate, silu_pre, c, nullptr);
}

// Few rows (small systems): with a handful of 64-row tiles the tiled GEMM above is bound by
// the latency of its 16-deep slices. These cover the GPU instead, GEMM_FEW_ROWS rows at a
// time: NT, one column per warp (the lanes split k, a fixed butterfly sums them); NN, 32
// columns per block (its warps split k). Fixed order: deterministic. The host picks them
// up to GEMM_FEW_ROWS_MAX rows.
#ifndef GEMM_FEW_ROWS
#error "GEMM_FEW_ROWS must be defined by the host (-DGEMM_FEW_ROWS=...)"
#endif

extern "C" __global__ void gemm_nt_few_rows(int m_rows, int n_cols, int k_depth,
                                            const float* __restrict__ a,
                                            const float* __restrict__ b,
                                            const float* __restrict__ bias, int accumulate,
                                            float* __restrict__ c,
                                            float* __restrict__ activated) {
    const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const i64 groups = (m_rows + GEMM_FEW_ROWS - 1) / GEMM_FEW_ROWS;
    if (warp >= groups * n_cols) return;  // the whole warp: its index is uniform
    const int col = (int)(warp % n_cols);
    const int row0 = (int)(warp / n_cols) * GEMM_FEW_ROWS;
    float acc[GEMM_FEW_ROWS] = {};
    const float* b_row = b + (i64)col * k_depth;
    for (int k = lane; k < k_depth; k += 32) {
        const float bk = b_row[k];
        for (int r = 0; r < GEMM_FEW_ROWS; ++r) {
            if (row0 + r < m_rows) acc[r] += a[(i64)(row0 + r) * k_depth + k] * bk;
        }
    }
    for (int r = 0; r < GEMM_FEW_ROWS; ++r) {
        for (int offset = 16; offset > 0; offset >>= 1)
            acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
    }
    if (lane != 0) return;
    for (int r = 0; r < GEMM_FEW_ROWS && row0 + r < m_rows; ++r) {
        float value = acc[r];
        if (bias) value += bias[col];
        gemm_store(value, (i64)(row0 + r) * n_cols + col, accumulate, nullptr, c, activated);
    }
}

// NN: a block per 32 columns and GEMM_FEW_ROWS rows; its warps split k into equal runs, the
// lanes take the columns (coalesced rows of b), and the warps' sums are added in order.
#define FEW_ROWS_WARPS (GEMM_THREADS / 32)
extern "C" __global__ void gemm_nn_few_rows(int m_rows, int n_cols, int k_depth,
                                            const float* __restrict__ a,
                                            const float* __restrict__ b,
                                            const float* __restrict__ silu_pre, int accumulate,
                                            float* __restrict__ c) {
    __shared__ float sums[GEMM_FEW_ROWS][FEW_ROWS_WARPS][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int col = blockIdx.x * 32 + lane;
    const int row0 = blockIdx.y * GEMM_FEW_ROWS;
    const int run = (k_depth + FEW_ROWS_WARPS - 1) / FEW_ROWS_WARPS;
    const int k_start = warp * run, k_end = min(k_depth, k_start + run);
    float acc[GEMM_FEW_ROWS] = {};
    if (col < n_cols) {
        for (int k = k_start; k < k_end; ++k) {
            const float bk = b[(i64)k * n_cols + col];
            for (int r = 0; r < GEMM_FEW_ROWS; ++r) {
                if (row0 + r < m_rows) acc[r] += a[(i64)(row0 + r) * k_depth + k] * bk;
            }
        }
    }
    for (int r = 0; r < GEMM_FEW_ROWS; ++r) sums[r][warp][lane] = acc[r];
    __syncthreads();
    const int r = warp;
    if (r < GEMM_FEW_ROWS && row0 + r < m_rows && col < n_cols) {
        float total = 0.0f;
        for (int w = 0; w < FEW_ROWS_WARPS; ++w) total += sums[r][w][lane];
        gemm_store(total, (i64)(row0 + r) * n_cols + col, accumulate, silu_pre, c, nullptr);
    }
}
