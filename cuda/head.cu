// The energy head's ends (its Linear layers and SiLUs run as dense.cu's GEMMs and
// activations): per-atom energies from the last activation, and the start of the backward
// pass. Mirrors src/backend/cpu/head.rs.

// E_i = b + sum_c act[i][c] w[c] (the head's last Linear(H/4, 1)).
extern "C" __global__ void head_energy(int n, int q, const float* __restrict__ act,
                                       const float* __restrict__ weight, const float* bias,
                                       float* __restrict__ energies) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float e = bias[0];
    for (int c = 0; c < q; ++c) e += act[(i64)i * q + c] * weight[c];
    energies[i] = e;
}

// Start of the backward pass: dE/dpre of the head's second activation, 0 for ghost atoms.
extern "C" __global__ void head_backward(int n, int n_energy, int q,
                                         const float* __restrict__ weight,
                                         const float* __restrict__ pre,
                                         float* __restrict__ gradient) {
    const i64 count = (i64)n * q;
    for (i64 k = (i64)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (i64)gridDim.x * blockDim.x) {
        const i64 i = k / q;
        const int c = (int)(k % q);
        gradient[k] = i < n_energy ? weight[c] * silu_derivative(pre[k]) : 0.0f;
    }
}
