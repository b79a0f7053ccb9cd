// Dense layers: tiled float32 GEMMs (64 x 64 tiles, 16-deep slices, 256 threads, 4 x 4
// outputs per thread) and the element-wise activations around them. Each output sums over
// k in a fixed order: deterministic.

// Tile side and threads per block; the host sizes the grid from them.
#ifndef GEMM_TILE
#error "GEMM_TILE must be defined by the host (-DGEMM_TILE=...)"
#endif
#ifndef GEMM_THREADS
#error "GEMM_THREADS must be defined by the host (-DGEMM_THREADS=...)"
#endif
static_assert(GEMM_TILE == 64 && GEMM_THREADS == 256,
              "the index arithmetic below assumes 64 x 64 tiles of 16 x 16 threads");

#define TILE_M GEMM_TILE
#define TILE_N GEMM_TILE
#define TILE_K 16

// C[M][N] = A[M][K] . op(B) (+ bias[N]) (+ C when accumulate), row-major; op(B) = B^T with
// B stored [N][K] (a Linear layer's weight: forward) when transposed, else B stored [K][N]
// (backward through a Linear layer).
template <bool TRANSPOSED>
__device__ void gemm(int m_rows, int n_cols, int k_depth, const float* __restrict__ a,
                     const float* __restrict__ b, const float* __restrict__ bias, int accumulate,
                     float* __restrict__ c) {
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
            float* out = c + (i64)row * n_cols + col;
            *out = accumulate ? *out + value : value;
        }
    }
}

extern "C" __global__ void gemm_nt(int m_rows, int n_cols, int k_depth, const float* a,
                                   const float* b, const float* bias, int accumulate, float* c) {
    gemm<true>(m_rows, n_cols, k_depth, a, b, bias, accumulate, c);
}

extern "C" __global__ void gemm_nn(int m_rows, int n_cols, int k_depth, const float* a,
                                   const float* b, int accumulate, float* c) {
    gemm<false>(m_rows, n_cols, k_depth, a, b, nullptr, accumulate, c);
}

// output = silu(input), element-wise.
extern "C" __global__ void silu_forward(i64 count, const float* __restrict__ input,
                                        float* __restrict__ output) {
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        output[k] = silu(input[k]);
    }
}

// gradient *= silu'(pre), element-wise.
extern "C" __global__ void silu_backward(i64 count, const float* __restrict__ pre,
                                         float* __restrict__ gradient) {
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        gradient[k] *= silu_derivative(pre[k]);
    }
}
