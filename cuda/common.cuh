// Shared by every kernel family (one family per .cu file). The library concatenates this
// header and the .cu files into one NVRTC program, compiled at run time for the GPU's own
// architecture; see src/backend/cuda/compile.rs.
#pragma once

typedef long long i64;
typedef unsigned long long u64;

// The numbers shared with the host are defined once, in Rust, and passed by NVRTC as
// -DNAME=value options (src/backend/cuda/compile.rs, `defines`). Those used by several
// families are checked here, the others in their family's file.

// Status words the host reads back with the results (see readout.cu): STATUS_OVERFLOW, an
// edge array was too small (cannot happen: the host sizes the arrays from the count before
// filling them; readout reports it as an internal error); STATUS_CLOSE_EDGE, the lowest edge
// index closer than MINIMUM_DISTANCE (NO_CLOSE_EDGE: none).
#ifndef STATUS_WORDS
#error "STATUS_WORDS must be defined by the host (-DSTATUS_WORDS=...)"
#endif
#ifndef STATUS_OVERFLOW
#error "STATUS_OVERFLOW must be defined by the host (-DSTATUS_OVERFLOW=...)"
#endif
#ifndef STATUS_CLOSE_EDGE
#error "STATUS_CLOSE_EDGE must be defined by the host (-DSTATUS_CLOSE_EDGE=...)"
#endif
#ifndef NO_CLOSE_EDGE
#error "NO_CLOSE_EDGE must be defined by the host (-DNO_CLOSE_EDGE=...)"
#endif

// Floats per edge of geometry: d, u (3), r (3), table interval k, position t in it.
#ifndef GEOMETRY_WIDTH
#error "GEOMETRY_WIDTH must be defined by the host (-DGEOMETRY_WIDTH=...)"
#endif
static_assert(GEOMETRY_WIDTH == 9, "the kernels read the geometry as d, u (3), r (3), k, t");

// Vectors per filter-table node: value, difference to the next node, h dw/dd.
#ifndef NODE_VECTORS
#error "NODE_VECTORS must be defined by the host (-DNODE_VECTORS=...)"
#endif
static_assert(NODE_VECTORS == 3, "the interpolation reads value, difference and h dw/dd");

// Two distinct atoms closer than this (Angstrom) are refused, as on the CPU.
#ifndef MINIMUM_DISTANCE
#error "MINIMUM_DISTANCE must be defined by the host (-DMINIMUM_DISTANCE=...)"
#endif

// u = r / (d + U_EPSILON), as on the CPU.
#ifndef U_EPSILON
#error "U_EPSILON must be defined by the host (-DU_EPSILON=...)"
#endif

// A norm counts as zero to round-off at most NORM_ROUND_OFF_FACTOR x its round-off estimate
// (backend/mod.rs says why); F32_EPSILON is float's machine epsilon.
#ifndef NORM_ROUND_OFF_FACTOR
#error "NORM_ROUND_OFF_FACTOR must be defined by the host (-DNORM_ROUND_OFF_FACTOR=...)"
#endif
#ifndef F32_EPSILON
#error "F32_EPSILON must be defined by the host (-DF32_EPSILON=...)"
#endif

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
