// Shared by every kernel family (one family per .cu file). The library concatenates this
// header and the .cu files into one NVRTC program, compiled at run time for the GPU's own
// architecture; see src/backend/cuda/kernels.rs.
#pragma once

typedef long long i64;
typedef unsigned long long u64;

// Status words the host reads back with the results (see readout.cu).
#define STATUS_OVERFLOW 0      // an edge array was too small; the host grows it and repeats
#define STATUS_CLOSE_EDGE 1    // lowest edge index closer than MINIMUM_DISTANCE (INT_MAX: none)
#define STATUS_WORDS 4

// Floats per edge of geometry: d, u (3), r (3), table interval k, position t in it.
#define GEOMETRY_WIDTH 9
// Vectors per filter-table node: value, difference to the next node, h dw/dd.
#define NODE_VECTORS 3

// Two distinct atoms closer than this (Angstrom) are refused, as on the CPU.
#define MINIMUM_DISTANCE 1e-4

// Edge vector r_ij = (r_j - r_i) + n . cell in float64, in exactly the operation order of the
// CPU code (neighbors::edge_vector): no fused multiply-adds, so both lists agree bit for bit
// on which pairs lie within the cutoff.
__device__ __forceinline__ void edge_vector(const double* __restrict__ positions,
                                            const double* __restrict__ cell, int i, int j,
                                            int n0, int n1, int n2, double r[3]) {
    const double a = (double)n0, b = (double)n1, c = (double)n2;
    for (int x = 0; x < 3; ++x) {
        const double s = __dadd_rn(__dadd_rn(__dmul_rn(a, cell[x]), __dmul_rn(b, cell[3 + x])),
                                   __dmul_rn(c, cell[6 + x]));
        r[x] = __dadd_rn(__dsub_rn(positions[3 * j + x], positions[3 * i + x]), s);
    }
}

__device__ __forceinline__ double squared_norm(const double r[3]) {
    return __dadd_rn(__dadd_rn(__dmul_rn(r[0], r[0]), __dmul_rn(r[1], r[1])),
                     __dmul_rn(r[2], r[2]));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float silu_derivative(float x) {
    const float sigmoid = 1.0f / (1.0f + expf(-x));
    return sigmoid * (1.0f + x * (1.0f - sigmoid));
}

// Cubic Hermite basis at t in [0, 1]: weights of v0, h m0, v1, h m1 (model/filter.rs).
__device__ __forceinline__ void hermite_basis(float t, float b[4]) {
    const float s = 1.0f - t;
    b[0] = (1.0f + 2.0f * t) * s * s;
    b[1] = t * s * s;
    b[2] = t * t * (3.0f - 2.0f * t);
    b[3] = t * t * (t - 1.0f);
}

__device__ __forceinline__ void hermite_basis_derivative(float t, float b[4]) {
    b[0] = 6.0f * t * t - 6.0f * t;
    b[1] = 3.0f * t * t - 4.0f * t + 1.0f;
    b[2] = 6.0f * t - 6.0f * t * t;
    b[3] = 3.0f * t * t - 2.0f * t;
}

// Deterministic block-wide sum (fixed tree). `scratch` holds one float per warp; every thread
// receives the total.
__device__ __forceinline__ float block_sum(float value, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}
